"""DICOM TLS: certificates and keys from files, TLS 1.2 or newer, clear errors.

:class:`ServerTls` makes the context of the storage SCP's TLS port, :class:`ClientTls` the one
used to send to a TLS destination. Both check their files when they are constructed, so a
missing, unreadable or mismatched certificate stops the service at start-up with a message
naming the setting and the file. Private keys must not be encrypted (no password prompt in a
service): give the key file to the service user only (mode 0600).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MINIMUM_TLS_VERSION",
    "ClientTls",
    "ServerTls",
    "TlsHandshakeError",
    "accept_tls",
    "describe_peer",
    "handshake_failure_text",
]

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2
"""Older protocol versions are refused in both directions (BCP 195)."""

_HANDSHAKE_REASONS: dict[str, str] = {
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (plain DICOM on the TLS port?)",
    "HTTP_REQUEST": "the peer does not speak TLS (plain DICOM on the TLS port?)",
    "UNKNOWN_PROTOCOL": "the peer does not speak TLS (plain DICOM on the TLS port?)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no certificate (one is required)",
    "UNSUPPORTED_PROTOCOL": "the peer offered only TLS versions below 1.2",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no common TLS version (1.2 or newer required)",
    "NO_SHARED_CIPHER": "no common cipher suite",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer rejected our certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer ended the handshake (handshake failure alert)",
}


class TlsHandshakeError(Exception):
    """A TLS handshake did not complete; ``str(exc)`` says why in words."""


@dataclass(frozen=True)
class ServerTls:
    """TLS settings of the storage SCP's TLS port.

    Parameters
    ----------
    certificate : Path
        Our certificate (PEM), optionally followed by its intermediate CA certificates.
    private_key : Path
        Its private key (PEM, not encrypted).
    ca_certificates : Path or None
        CA certificates (PEM bundle) that client certificates are verified against. With
        it, a client that presents a certificate must present a trusted one.
    require_client_certificate : bool
        Refuse clients that present no trusted certificate (needs ``ca_certificates``).
    setting : str
        Name of the settings section, used in error messages (e.g. ``"node.tls"``).

    Raises
    ------
    ValueError
        When a file is missing or unreadable, is not a PEM certificate or key, the key does
        not belong to the certificate or is encrypted, or a client certificate is required
        without ``ca_certificates``.
    """

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    setting: str = "tls"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "certificate", _readable(self.certificate, f"{self.setting}.certificate")
        )
        object.__setattr__(
            self, "private_key", _readable(self.private_key, f"{self.setting}.private_key")
        )
        if self.ca_certificates is not None:
            object.__setattr__(
                self,
                "ca_certificates",
                _readable(self.ca_certificates, f"{self.setting}.ca_certificates"),
            )
        elif self.require_client_certificate:
            raise ValueError(
                f"{self.setting}.require_client_certificate needs "
                f"{self.setting}.ca_certificates (the CAs client certificates are checked "
                "against)"
            )
        self.context()  # reads every file now: errors at start-up, not at the first client

    def context(self) -> ssl.SSLContext:
        """A new server-side context (TLS >= 1.2) with our certificate and the client CAs.

        Returns
        -------
        ssl.SSLContext

        Raises
        ------
        ValueError
            When a file cannot be loaded (see the class).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = MINIMUM_TLS_VERSION
        _load_chain(context, self.certificate, self.private_key, self.setting)
        if self.ca_certificates is not None:
            _load_cas(context, self.ca_certificates, f"{self.setting}.ca_certificates")
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.require_client_certificate else ssl.CERT_OPTIONAL
            )
        return context


@dataclass(frozen=True)
class ClientTls:
    """TLS settings for sending to TLS destinations.

    The destination's certificate is always verified.

    Parameters
    ----------
    ca_certificates : Path or None
        CA certificates (PEM bundle) the destination's certificate must chain to;
        ``None`` uses the system's trusted CAs.
    certificate, private_key : Path or None
        Our client certificate and its key (PEM, key not encrypted), for destinations that
        require one; both or neither.
    check_hostname : bool
        Also require the destination's host name or IP address (as written in the
        destination) in its certificate's subject alternative names.
    setting : str
        Name of the settings section, used in error messages (e.g. ``"send.tls"``).

    Raises
    ------
    ValueError
        When a file is missing, unreadable or invalid, or only one of certificate and key is
        given.
    """

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    check_hostname: bool = True
    setting: str = "tls"

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError(
                f"{self.setting}.certificate and {self.setting}.private_key go together: "
                "give both or neither"
            )
        for name in ("ca_certificates", "certificate", "private_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _readable(value, f"{self.setting}.{name}"))
        self.context()

    def context(self) -> ssl.SSLContext:
        """A new client-side context (TLS >= 1.2, peer verified).

        Returns
        -------
        ssl.SSLContext

        Raises
        ------
        ValueError
            When a file cannot be loaded (see the class).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = MINIMUM_TLS_VERSION
        context.check_hostname = self.check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        if self.ca_certificates is not None:
            _load_cas(context, self.ca_certificates, f"{self.setting}.ca_certificates")
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.certificate is not None and self.private_key is not None:
            _load_chain(context, self.certificate, self.private_key, self.setting)
        return context


def accept_tls(sock: socket.socket, context: ssl.SSLContext, timeout_s: float) -> ssl.SSLSocket:
    """Run the server side of the TLS handshake on an accepted connection.

    Parameters
    ----------
    sock : socket.socket
        The accepted TCP connection (it is detached: use the returned socket).
    context : ssl.SSLContext
        A server context (:meth:`ServerTls.context`).
    timeout_s : float
        The handshake must complete within this many seconds.

    Returns
    -------
    ssl.SSLSocket
        The TLS connection, in blocking mode.

    Raises
    ------
    TlsHandshakeError
        When the handshake fails or times out; the connection is closed.
    """
    sock.settimeout(timeout_s)
    try:
        tls_sock = context.wrap_socket(sock, server_side=True)
    except TimeoutError as exc:
        _close_quietly(sock)
        raise TlsHandshakeError(f"TLS handshake not completed within {timeout_s:g} s") from exc
    except (OSError, ValueError) as exc:
        _close_quietly(sock)
        raise TlsHandshakeError(handshake_failure_text(exc)) from exc
    tls_sock.settimeout(None)
    return tls_sock


def handshake_failure_text(exc: BaseException) -> str:
    """Say in words why a TLS handshake failed.

    Parameters
    ----------
    exc : BaseException
        What the handshake raised.

    Returns
    -------
    str
        E.g. ``"TLS handshake failed: the peer sent no certificate (one is required)"``.
    """
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError | EOFError):
        return "TLS handshake failed: the peer closed the connection"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        text = _HANDSHAKE_REASONS.get(reason, reason.replace("_", " ").lower() or str(exc))
        return f"TLS handshake failed: {text}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake failed: timed out"
    return f"TLS handshake failed: {type(exc).__name__}: {exc}"


def describe_peer(tls_sock: ssl.SSLSocket) -> str:
    """Protocol version and the peer certificate's subject common name, for the audit trail.

    Parameters
    ----------
    tls_sock : ssl.SSLSocket
        A connection after its handshake.

    Returns
    -------
    str
        E.g. ``"TLSv1.3, peer certificate CN=scanner1"`` or ``"TLSv1.2, no peer certificate"``.
    """
    version = tls_sock.version() or "TLS"
    cert = tls_sock.getpeercert()
    if not cert:
        return f"{version}, no peer certificate"
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return f"{version}, peer certificate CN={names[0] if names else '?'}"


def _readable(path: Path | str, setting: str) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"{setting} must be a file path, got {path!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{setting}: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{setting}: not a file: {path}")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from exc
    return path


def _no_password() -> bytes:
    raise _EncryptedKeyError


class _EncryptedKeyError(Exception):
    pass


def _load_chain(context: ssl.SSLContext, certificate: Path, key: Path, setting: str) -> None:
    password: Callable[[], bytes] = _no_password
    try:
        context.load_cert_chain(certificate, key, password=password)
    except _EncryptedKeyError:
        raise ValueError(
            f"{setting}.private_key {key} is encrypted; the service cannot type a password: "
            "give an unencrypted key readable only by the service user"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            cause = "the private key does not belong to the certificate"
        else:
            cause = f"not a PEM certificate and matching PEM private key ({exc.reason or exc})"
        raise ValueError(
            f"{setting}: cannot load certificate {certificate} with key {key}: {cause}"
        ) from exc


def _load_cas(context: ssl.SSLContext, path: Path, setting: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(
            f"{setting}: {path} holds no usable PEM CA certificate ({exc.reason or exc})"
        ) from exc


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
