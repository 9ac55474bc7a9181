"""Acceptor processes: several processes take associations on one plain DICOM port.

pynetdicom handles an association in Python threads, so one process uses one core however
many senders are connected. With ``ScpConfig.acceptor_processes = N > 1`` the storage SCP
starts N child processes (``spawn``) that each listen on the same port (``SO_REUSEPORT``:
the kernel spreads new connections over them). Each child receives, checks and spools
instances exactly as a single-process SCP does (the crash-safe write happens before the
answer, in the child). Everything that needs the whole node stays in the parent, which
the children talk to over a pipe:

- association admission (allowed AEs, the pause switch, ``max_associations`` and
  ``max_associations_per_ae`` counted over all processes): a round trip per association;
- ``on_instance``: a round trip per instance, after the file is durable and before the
  answer, so a failing callback in the parent (job store refusing rows) is answered
  0xC211 as in a single process;
- ``on_association`` and ``on_refusal`` (the audit trail), and the children's log records.

The TLS port, when configured, stays in the parent process. An acceptor process that ends
unexpectedly is started again; the slots of its open associations are freed and the
associations audited as aborted.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - imports for type hints only
    from multiprocessing.process import BaseProcess

    from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
    from dicom_node.scp import AssociationRecord, ScpConfig, StoreRefusal

__all__ = ["AcceptorPool", "Admission", "ParentLink", "Rejection", "reserve_port"]

LOGGER = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Admission:
    """What the parent needs to admit an association a child received.

    Attributes
    ----------
    token : str
        Unique name of the association (child pid and a counter).
    calling_ae, called_ae : str
        AE titles of the request.
    address : str
        Peer IP address.
    port : int
        Peer TCP port.
    """

    token: str
    calling_ae: str
    called_ae: str
    address: str
    port: int


@dataclass(frozen=True)
class Rejection:
    """Why and how an association is rejected (A-ASSOCIATE-RJ parameters).

    Attributes
    ----------
    reason : str
        Words for the audit trail and the log.
    result, source, diagnostic : int
        Result (1 permanent, 2 transient), source and reason/diagnostic of the reject.
    """

    reason: str
    result: int
    source: int
    diagnostic: int


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a ``SO_REUSEPORT`` socket so the acceptors can share its port.

    Parameters
    ----------
    host : str
        Address the acceptors listen on.
    port : int
        Port; 0 lets the OS choose (read it from ``getsockname()``).

    Returns
    -------
    socket.socket
        The bound socket; close it once the acceptors listen.

    Raises
    ------
    OSError
        If the port cannot be bound, or the platform has no ``SO_REUSEPORT``.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("acceptor_processes > 1 needs SO_REUSEPORT (Linux, BSD, macOS)")
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(info[4])
    except BaseException:
        sock.close()
        raise
    return sock


class ParentLink:
    """The child's end of the pipe to the parent (used inside an acceptor process).

    Parameters
    ----------
    conn : multiprocessing.connection.Connection
        Duplex pipe to the parent.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message that gets no answer.

        Raises
        ------
        OSError, EOFError
            If the parent has gone.
        """
        with self._send_lock:
            self._conn.send(message)

    def _call(self, message: tuple[Any, ...]) -> object:
        with self._call_lock:  # the parent answers in order: one question at a time
            self.send(message)
            return self._conn.recv()

    def admit(self, admission: Admission) -> Rejection | None:
        """Ask the parent whether to accept an association (a round trip).

        Returns
        -------
        Rejection or None
            ``None``: accept.
        """
        answer = self._call(("admit", admission))
        return answer if isinstance(answer, Rejection) else None

    def instance(self, info: InstanceInfo) -> None:
        """Run the parent's ``on_instance`` for a spooled instance (a round trip).

        Raises
        ------
        RuntimeError
            With the parent's error text when its ``on_instance`` failed.
        """
        error = self._call(("instance", info))
        if error is not None:
            raise RuntimeError(f"in the node's parent process: {error}")

    def refusal(self, refusal: StoreRefusal) -> None:
        """Hand a refused C-STORE to the parent's audit trail."""
        self.send(("refusal", refusal))

    def finished(self, token: str, record: AssociationRecord) -> None:
        """Report an association's end (the parent frees its slot and audits it)."""
        self.send(("finished", token, record))


class _PipeLogHandler(logging.Handler):
    """Sends the child's log records to the parent, which logs them with its handlers."""

    def __init__(self, link: ParentLink) -> None:
        super().__init__()
        self._link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record) if record.exc_info else record.getMessage()
            fields = dict(record.__dict__)
            fields.update(msg=message, args=None, exc_info=None, exc_text=None)
            fields.pop("message", None)
            self._link.send(("log", fields))
        except Exception:
            self.handleError(record)


def acceptor_main(
    conn: Connection,
    control: Connection,
    config: ScpConfig,
    spool_root: Path,
    quarantine_dir: Path,
    own_markers: OwnResultMarkers,
    pseudonyms: PseudonymKey,
    log_level: int,
) -> None:
    """Entry point of an acceptor process: serve the shared port until told to stop.

    Parameters
    ----------
    conn : Connection
        Pipe for admissions, instances, audit records and log records.
    control : Connection
        Pipe on which the parent says stop (or closes: the parent has gone).
    config : ScpConfig
        The node's settings with ``acceptor_processes = 1`` and no TLS port.
    spool_root, quarantine_dir : pathlib.Path
        The node's spool.
    own_markers : OwnResultMarkers
        Recognises our own results.
    pseudonyms : PseudonymKey
        Site secret of the patient keys.
    log_level : int
        Level of the child's root logger (the parent's).
    """
    from pydicom import config as pydicom_config

    from dicom_node.scp import StorageSCP
    from dicom_node.spool import Spool

    # This process reads only DIMSE command sets and received headers, whose values our own
    # checks validate (dicom_node.validation); pydicom's per-value regex check on reading
    # only warns, and costs a quarter of the header check.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    link = ParentLink(conn)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_PipeLogHandler(link))
    root.setLevel(log_level)
    logging.getLogger("pynetdicom").setLevel(max(log_level, logging.WARNING))
    scp = StorageSCP(
        config,
        Spool(spool_root, quarantine_dir),
        on_instance=link.instance,
        own_markers=own_markers,
        pseudonyms=pseudonyms,
        on_refusal=link.refusal,
    )
    scp.serve_for_parent(link)
    try:
        link.send(("ready", scp.port))
        with contextlib.suppress(EOFError, OSError):
            control.recv()  # "stop", or EOF when the parent has gone
    finally:
        scp.stop()


class AcceptorPool:
    """Parent side: starts the acceptor processes and answers their messages.

    Parameters
    ----------
    n_processes : int
        Number of acceptor processes (>= 2).
    config : ScpConfig
        Settings each child serves with (``acceptor_processes = 1``, no TLS port, the port
        reserved by :func:`reserve_port`).
    spool_root, quarantine_dir : pathlib.Path
        The node's spool.
    own_markers : OwnResultMarkers
        Recognises our own results.
    pseudonyms : PseudonymKey
        Site secret.
    admit : Callable[[Admission], Rejection | None]
        Decides on a child's association request.
    on_instance : Callable[[InstanceInfo], None]
        Called for each instance a child spooled.
    on_finished : Callable[[str, AssociationRecord], None]
        Called when a child's association has ended (token, record).
    on_refusal : Callable[[StoreRefusal], None]
        Called for each C-STORE a child refused.
    on_lost : Callable[[int], None]
        Called with the process id of a child that ended unexpectedly (before it is
        replaced).
    """

    def __init__(
        self,
        n_processes: int,
        config: ScpConfig,
        spool_root: Path,
        quarantine_dir: Path,
        *,
        own_markers: OwnResultMarkers,
        pseudonyms: PseudonymKey,
        admit: Callable[[Admission], Rejection | None],
        on_instance: Callable[[InstanceInfo], None],
        on_finished: Callable[[str, AssociationRecord], None],
        on_refusal: Callable[[StoreRefusal], None],
        on_lost: Callable[[int], None],
    ) -> None:
        if n_processes < 2:
            raise ValueError(f"AcceptorPool needs >= 2 processes, got {n_processes}")
        self._n = n_processes
        self._args = (config, spool_root, quarantine_dir, own_markers, pseudonyms)
        self._admit = admit
        self._on_instance = on_instance
        self._on_finished = on_finished
        self._on_refusal = on_refusal
        self._on_lost = on_lost
        self._children: list[tuple[BaseProcess, Connection, Connection]] = []
        self._readers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the list of children
        self._context = multiprocessing.get_context("spawn")
        self._level = logging.INFO

    @property
    def pids(self) -> list[int]:
        """Process ids of the acceptor processes."""
        with self._lock:
            return [int(proc.pid) for proc, _, _ in self._children if proc.pid is not None]

    def start(self) -> None:
        """Start the children; return once every one listens.

        Raises
        ------
        RuntimeError
            If a child does not report ready within ``START_TIMEOUT_S`` (its log lines
            have been forwarded by then); the started children are stopped.
        """
        self._level = logging.getLogger().getEffectiveLevel()
        try:
            with self._lock:
                self._children = [self._spawn(index) for index in range(self._n)]
            for index in range(self._n):
                self._activate(index)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, index: int) -> tuple[BaseProcess, Connection, Connection]:
        conn, child_conn = self._context.Pipe()
        control, child_control = self._context.Pipe()
        proc = self._context.Process(
            target=acceptor_main,
            args=(child_conn, child_control, *self._args, self._level),
            name=f"dicom-acceptor-{index}",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        child_control.close()
        return proc, conn, control

    def _activate(self, index: int) -> None:
        """Wait until child ``index`` listens, then read its messages in a thread."""
        proc, conn, _ = self._children[index]
        self._wait_ready(index, proc, conn)
        reader = threading.Thread(
            target=self._read, args=(index, proc, conn), name=f"acceptor-link-{index}"
        )
        reader.daemon = True
        reader.start()
        self._readers.append(reader)

    def _wait_ready(self, index: int, proc: BaseProcess, conn: Connection) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not conn.poll(min(0.5, max(deadline - time.monotonic(), 0.0))):
                if not proc.is_alive():
                    break
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "ready":
                return
            self._dispatch(conn, message)  # log lines written while starting
        raise RuntimeError(
            f"acceptor process {index} did not start (exit code {proc.exitcode}); see the log"
        )

    def _read(self, index: int, proc: BaseProcess, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if not self._stopping.is_set():
                    self._replace(index, proc)
                return
            try:
                self._dispatch(conn, message)
            except Exception:
                LOGGER.exception("handling a message of acceptor process %d failed", index)

    def _dispatch(self, conn: Connection, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "admit":
            try:
                answer: Rejection | None = self._admit(message[1])
            except Exception:
                LOGGER.exception("association admission failed")
                answer = Rejection("admission failed in the parent process", 2, 2, 1)
            conn.send(answer)
        elif kind == "instance":
            error: str | None = None
            try:
                self._on_instance(message[1])
            except Exception as exc:  # the child logs it and answers 0xC211
                error = f"{type(exc).__name__}: {exc}"[:200]
            conn.send(error)
        elif kind == "finished":
            self._on_finished(message[1], message[2])
        elif kind == "refusal":
            self._on_refusal(message[1])
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            logging.getLogger(record.name).handle(record)

    def _replace(self, index: int, proc: BaseProcess) -> None:
        """Child ``index`` ended without being asked: audit, then start another."""
        proc.join(timeout=STOP_TIMEOUT_S)
        LOGGER.error(
            "acceptor process %d (pid %s) ended unexpectedly with exit code %s; starting another",
            index,
            proc.pid,
            proc.exitcode,
        )
        if proc.pid is not None:
            self._on_lost(int(proc.pid))
        with self._lock:
            if self._stopping.is_set():
                return
            old = self._children[index]
            try:
                self._children[index] = self._spawn(index)
                self._activate(index)
            except Exception:
                LOGGER.exception("acceptor process %d could not be started again", index)
            for end in old[1:]:
                end.close()

    def stop(self) -> None:
        """Tell every child to stop, wait for them (kill after ``STOP_TIMEOUT_S``)."""
        self._stopping.set()
        with self._lock:
            children, self._children = self._children, []
        for _, _, control in children:
            with contextlib.suppress(OSError):
                control.send("stop")
        for proc, _conn, control in children:
            proc.join(timeout=STOP_TIMEOUT_S)
            if proc.is_alive():
                LOGGER.error("acceptor process %s did not stop; killing it", proc.pid)
                proc.kill()
                proc.join(timeout=STOP_TIMEOUT_S)
            control.close()
        for reader in list(self._readers):
            if reader is not threading.current_thread():
                reader.join(timeout=STOP_TIMEOUT_S)
        self._readers = []
        for _, conn, _ in children:
            conn.close()
