"""Acceptor processes: several processes serve the associations of one plain DICOM port.

pynetdicom handles an association in Python threads, so one process uses one core however
many senders are connected. With ``ScpConfig.acceptor_processes = N > 1`` the storage SCP
starts N child processes (``spawn``). The service process listens on the port and accepts;
it hands each connection to the child with the fewest open connections
(:mod:`dicom_node.handoff`), so four senders on two children are served two and two (the
kernel's ``SO_REUSEPORT`` hash, used before, put three or all four on one child in more
than half of the cases). Each child receives, checks and spools instances exactly as a
single-process SCP does (the crash-safe write happens before the answer, in the child).
Everything that needs the whole node stays in the parent, which the children talk to over
a pipe:

- association admission (allowed AEs, the pause switch, ``max_associations`` and
  ``max_associations_per_ae`` counted over all processes): a round trip per association;
- ``on_instance``: a round trip per instance, after the file is durable and before the
  answer, so a failing callback in the parent (job store refusing rows) is answered
  0xC211 as in a single process;
- ``on_association`` and ``on_refusal`` (the audit trail), the end of each connection
  (for the choice of child), and the children's log records.

The TLS port, when configured, stays in the parent process. An acceptor process that ends
unexpectedly is started again; the slots of its open associations are freed and the
associations audited as aborted.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.handoff import hand_over

if TYPE_CHECKING:  # pragma: no cover - imports for type hints only
    from multiprocessing.process import BaseProcess

    from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
    from dicom_node.scp import AssociationRecord, ScpConfig, StoreRefusal

__all__ = ["AcceptorPool", "Admission", "ParentLink", "Rejection", "listen"]

LOGGER = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HANDOFF_TIMEOUT_S = 5.0
"""Longest wait to hand a connection to a child that does not read its channel."""
_BACKLOG = 64
_NOT_READY_LOOK_S = 0.1  # while no child takes connections: look again this often
_RESTART_PAUSE_S = 1.0  # before starting a child again whose restart failed (doubling, to 30 s)
_RESTART_PAUSE_MAX_S = 30.0


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


def listen(host: str, port: int) -> socket.socket:
    """Listen on ``(host, port)`` for the acceptor processes (non-blocking accepts).

    Parameters
    ----------
    host : str
        Address to listen on.
    port : int
        Port; 0 lets the OS choose (read it from ``getsockname()``).

    Returns
    -------
    socket.socket
        The listening socket (``SO_REUSEADDR`` set, as pynetdicom's server sets it).

    Raises
    ------
    OSError
        If the port cannot be bound.
    """
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(_BACKLOG)
        sock.setblocking(False)
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

    def connection_closed(self) -> None:
        """Report that a handed-over connection has closed (one fewer open here)."""
        self.send(("closed",))


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
    handoff: socket.socket,
    config: ScpConfig,
    spool_root: Path,
    quarantine_dir: Path,
    own_markers: OwnResultMarkers,
    pseudonyms: PseudonymKey,
    log_level: int,
) -> None:
    """Entry point of an acceptor process: serve handed-over connections until told to stop.

    Parameters
    ----------
    conn : Connection
        Pipe for admissions, instances, audit records and log records.
    control : Connection
        Pipe on which the parent says stop (or closes: the parent has gone).
    handoff : socket.socket
        Channel on which the parent hands over accepted connections
        (:func:`dicom_node.handoff.take_over`).
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
    scp.serve_for_parent(link, handoff)
    try:
        link.send(("ready", scp.port))
        with contextlib.suppress(EOFError, OSError):
            control.recv()  # "stop", or EOF when the parent has gone
    finally:
        scp.stop()


@dataclass(eq=False)
class _Child:
    """One acceptor process and the parent's ends of its channels."""

    proc: BaseProcess
    conn: Connection  # admissions, instances, records, log lines
    control: Connection  # "stop"
    handoff: socket.socket  # accepted connections
    ready: bool = False  # it has said it serves: connections may be handed to it
    sending: threading.Lock = field(default_factory=threading.Lock)  # guards handoff's use

    def hand(self, connection: socket.socket) -> None:
        """Hand ``connection`` to this child (see :func:`hand_over`); ``OSError`` if not."""
        with self.sending:
            hand_over(self.handoff, connection)

    def close(self) -> None:
        """Close the parent's ends, never while a connection is being handed over.

        Closing ``handoff`` during a send could let its descriptor number be reused by a
        file opened meanwhile, and the send go there; a send after this fails cleanly.
        """
        with self.sending:
            for end in (self.conn, self.control, self.handoff):
                end.close()


class AcceptorPool:
    """Parent side: starts the acceptor processes and answers their messages.

    Parameters
    ----------
    n_processes : int
        Number of acceptor processes (>= 2).
    listener : socket.socket
        The listening socket of the plain port (:func:`listen`); the pool accepts on it
        and closes it in :meth:`stop`.
    config : ScpConfig
        Settings each child serves with (``acceptor_processes = 1``, no TLS port, the
        listener's port).
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
        listener: socket.socket,
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
        self._listener = listener
        self._children: list[_Child] = []
        self._open = [0] * n_processes  # handed-over connections not yet closed, per child
        self._turn = 0  # where the search for the least busy child starts (ties rotate)
        self._readers: list[threading.Thread] = []
        self._acceptor: threading.Thread | None = None
        self._wake_accept, self._accept_woken = socket.socketpair()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the list of children and their open connections
        self._ready_changed = threading.Condition(self._lock)
        self._context = multiprocessing.get_context("spawn")
        self._level = logging.INFO

    @property
    def pids(self) -> list[int]:
        """Process ids of the acceptor processes."""
        with self._lock:
            return [int(child.proc.pid) for child in self._children if child.proc.pid is not None]

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
            self._acceptor = threading.Thread(
                target=self._accept_loop, name="acceptor-accept", daemon=True
            )
            self._acceptor.start()
        except BaseException:
            self.stop()
            raise

    @property
    def open_connections(self) -> list[int]:
        """Handed-over connections not yet closed, per child (in child order)."""
        with self._lock:
            return list(self._open)

    def _accept_loop(self) -> None:
        """Accept on the plain port; hand each connection to the least busy child."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._accept_woken, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._accept_woken:
                        return
                    try:
                        connection, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue  # another look got it, or the peer gave up
                    except OSError as exc:  # out of descriptors, say: let it pass, retry
                        LOGGER.error("accepting a connection on the plain port failed: %s", exc)
                        time.sleep(0.1)
                        continue
                    with connection:  # our copy; the child has its own
                        try:
                            self._hand_out(connection)
                        except Exception:  # never stop accepting: log, drop this one
                            LOGGER.exception("handing a connection to an acceptor failed")

    def _hand_out(self, connection: socket.socket) -> None:
        """Give ``connection`` to the ready child with the fewest open connections.

        While no child is ready (all are being started again) it waits up to
        ``HANDOFF_TIMEOUT_S``; the peer meanwhile waits for its association answer.
        """
        deadline = time.monotonic() + HANDOFF_TIMEOUT_S
        while not self._stopping.is_set():
            for index, child in self._candidates():
                # counted before it goes: its "closed" may come back before hand_over returns
                self._count(index, +1, child)
                try:
                    child.hand(connection)
                except OSError as exc:  # it has just ended (it is being replaced), or hangs
                    self._count(index, -1, child)
                    LOGGER.warning("acceptor process %d did not take a connection: %s", index, exc)
                    continue
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._ready_changed:
                self._ready_changed.wait(min(remaining, _NOT_READY_LOOK_S))
        LOGGER.error("no acceptor process took a connection on the plain port; closing it")

    def _count(self, index: int, change: int, child: _Child | None = None) -> None:
        """Change child ``index``'s open connections (if given, only while it is ``child``)."""
        with self._lock:
            if index >= len(self._children):
                return
            if child is None or self._children[index] is child:
                self._open[index] = max(self._open[index] + change, 0)
                if change > 0:
                    self._turn = (index + 1) % len(self._children)

    def _candidates(self) -> list[tuple[int, _Child]]:
        """Ready children, fewest open connections first (ties: in turn)."""
        with self._lock:
            n = len(self._children)
            order = sorted(range(n), key=lambda i: (self._open[i], (i - self._turn) % n))
            return [(i, self._children[i]) for i in order if self._children[i].ready]

    def _spawn(self, index: int) -> _Child:
        conn, child_conn = self._context.Pipe()
        control, child_control = self._context.Pipe()
        handoff, child_handoff = socket.socketpair()
        handoff.settimeout(HANDOFF_TIMEOUT_S)
        proc = self._context.Process(
            target=acceptor_main,
            args=(child_conn, child_control, child_handoff, *self._args, self._level),
            name=f"dicom-acceptor-{index}",
            daemon=True,
        )
        try:
            proc.start()
        finally:
            child_conn.close()
            child_control.close()
            child_handoff.close()
        return _Child(proc, conn, control, handoff)

    def _activate(self, index: int) -> None:
        """Wait until child ``index`` listens, then read its messages in a thread."""
        child = self._children[index]
        proc, conn = child.proc, child.conn
        self._wait_ready(index, proc, conn)
        with self._ready_changed:
            child.ready = True
            self._ready_changed.notify_all()
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
            self._dispatch(index, conn, message)  # log lines written while starting
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
                self._dispatch(index, conn, message)
            except Exception:
                LOGGER.exception("handling a message of acceptor process %d failed", index)

    def _dispatch(self, index: int, conn: Connection, message: tuple[Any, ...]) -> None:
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
        elif kind == "closed":
            self._count(index, -1)
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            logging.getLogger(record.name).handle(record)

    def _replace(self, index: int, proc: BaseProcess) -> None:
        """Child ``index`` ended without being asked: audit, then start another.

        A restart that fails (no process could be started, or it did not become ready) is
        tried again, after a pause that doubles up to ``_RESTART_PAUSE_MAX_S``, until the
        pool stops.
        """
        proc.join(timeout=STOP_TIMEOUT_S)
        LOGGER.error(
            "acceptor process %d (pid %s) ended unexpectedly with exit code %s; starting another",
            index,
            proc.pid,
            proc.exitcode,
        )
        if proc.pid is not None:
            self._on_lost(int(proc.pid))
        pause = _RESTART_PAUSE_S
        while True:
            new: _Child | None = None
            with self._lock:
                if self._stopping.is_set():
                    return
                old = self._children[index]
                old.ready = False
                try:
                    new = self._children[index] = self._spawn(index)
                except Exception:
                    LOGGER.exception("acceptor process %d could not be started again", index)
                else:
                    self._open[index] = 0
            if new is not None:
                old.close()
                try:  # the other children take the connections meanwhile
                    self._activate(index)
                    return
                except Exception:
                    LOGGER.exception("acceptor process %d could not be started again", index)
                    new.proc.kill()  # if it still starts: it is replaced by the next try
                    new.proc.join(timeout=STOP_TIMEOUT_S)
            if self._stopping.wait(pause):
                return
            pause = min(2 * pause, _RESTART_PAUSE_MAX_S)

    def stop(self) -> None:
        """Tell every child to stop, wait for them (kill after ``STOP_TIMEOUT_S``)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_accept.send(b"x")
        if self._acceptor is not None and self._acceptor is not threading.current_thread():
            self._acceptor.join(timeout=STOP_TIMEOUT_S)
        self._listener.close()  # new connections are refused from here on
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            with contextlib.suppress(OSError):
                child.control.send("stop")
        for child in children:
            child.proc.join(timeout=STOP_TIMEOUT_S)
            if child.proc.is_alive():
                LOGGER.error("acceptor process %s did not stop; killing it", child.proc.pid)
                child.proc.kill()
                child.proc.join(timeout=STOP_TIMEOUT_S)
        for reader in list(self._readers):
            if reader is not threading.current_thread():
                reader.join(timeout=STOP_TIMEOUT_S)
        self._readers = []
        for child in children:
            child.close()
        self._wake_accept.close()
        self._accept_woken.close()
