"""Checks `cordt1 serve` runs before it listens: one clear line per problem, nothing silent.

Every check names the setting and says what to do. Errors stop the start (a folder that cannot
be written, a missing site_protocols file or model_dir, a job store or broker that does not
answer, a port in use); warnings do not (a destination that does not answer C-ECHO now: its
results are retried, see ``send.attempts``).
"""

from __future__ import annotations

import errno
import logging
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dicom_node.scu import Destination, echo
from service.settings import Settings

__all__ = ["ECHO_TIMEOUT_S", "Problem", "check_settings", "job_store_problem"]

log = logging.getLogger(__name__)

#: Longest wait for one destination's C-ECHO (they are asked in parallel).
ECHO_TIMEOUT_S = 5.0
#: Longest wait for the broker at start.
BROKER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings or the machine.

    Attributes
    ----------
    level : {"error", "warning"}
        An error stops `serve`; a warning is logged and `serve` starts.
    setting : str
        The dotted name of the setting concerned (``send.destinations``).
    message : str
        What is wrong and what to do, one line.
    """

    level: Literal["error", "warning"]
    setting: str
    message: str

    def line(self) -> str:
        """The problem as one line: ``<setting>: <message>``."""
        return f"{self.setting}: {self.message}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _writable_folder(path: Path, setting: str) -> Problem | None:
    """An error unless ``path`` is (or can be made) a folder we can write to."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".cordt1-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return Problem(
            "error",
            setting,
            f"cannot create or write the folder {path} ({reason}); "
            f"set {setting} to a folder the service user can write",
        )
    return None


def _check_files(settings: Settings) -> list[Problem]:
    from service.inputs.protocol import load_site_protocols
    from service.pipeline.model_build import load_scoring_model

    problems: list[Problem] = []
    found = _writable_folder(settings.data_dir, "data_dir")
    if found:
        problems.append(found)
    if settings.bids_dir is not None:
        found = _writable_folder(settings.bids_dir, "bids_dir")
        if found:
            problems.append(found)
    if settings.site_protocols is not None:
        path = settings.site_protocols
        if not path.is_file():
            problems.append(
                Problem(
                    "error",
                    "site_protocols",
                    f"file {path} not found; fix the path or remove the setting",
                )
            )
        else:
            try:
                load_site_protocols(path)
            except (OSError, ValueError, TypeError) as exc:
                problems.append(
                    Problem(
                        "error",
                        "site_protocols",
                        f"{path} cannot be read: {_first_line(exc)}; "
                        "see deploy/site-protocols.example.toml",
                    )
                )
    if settings.model_dir is not None:
        path = settings.model_dir
        if not path.is_dir():
            problems.append(
                Problem(
                    "error",
                    "model_dir",
                    f"folder {path} not found; build one with `cordt1 model build` or "
                    "remove the setting (T1 maps only)",
                )
            )
        else:
            try:
                load_scoring_model(path)
            except (OSError, ValueError, KeyError) as exc:
                problems.append(
                    Problem(
                        "error",
                        "model_dir",
                        f"{path} is not a usable normative model: {_first_line(exc)}; "
                        "build it again with `cordt1 model build`",
                    )
                )
    if settings.pseudonym_secret_file is not None and not settings.pseudonym_secret_file.is_file():
        problems.append(
            Problem(
                "error",
                "pseudonym_secret_file",
                f"file {settings.pseudonym_secret_file} not found; restore it from the backup "
                "(changing the secret changes every patient key)",
            )
        )
    return problems


def _port_problem(host: str, port: int, setting: str) -> Problem | None:
    """An error when ``host:port`` cannot be bound now (in use, or not ours)."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            why = "Address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            other = " or api.enabled = false" if setting == "api.port" else ""
            return Problem(
                "error",
                setting,
                f"cannot listen on {host}:{port}: {why or exc}; set {setting} to a free "
                f"port{other}",
            )
    return None


def _check_ports(settings: Settings) -> list[Problem]:
    node = settings.node
    candidates = []
    if node.listen_plain:
        candidates.append((node.host, node.port, "node.port"))
    if node.tls is not None:
        candidates.append((node.host, node.tls.port, "node.tls.port"))
    if settings.api.enabled:
        candidates.append((settings.api.host, settings.api.port, "api.port"))
    return [p for p in (_port_problem(*c) for c in candidates) if p is not None]


def job_store_problem(settings: Settings) -> Problem | None:
    """An error when the job store cannot be opened (created for SQLite) or does not answer."""
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.jobs.schema import SchemaError
    from service.jobs.store import JobStore, ping

    setting = "database_url" if settings.database_url else "data_dir"
    try:
        url: URL | None = make_url(settings.job_store_url)
    except Exception:  # an unparsable URL is reported by JobStore below
        url = None
    shown = url.render_as_string(hide_password=True) if url is not None else "(unparsable URL)"
    new_sqlite = (
        url is not None
        and url.drivername.startswith("sqlite")
        and bool(url.database)
        and not Path(str(url.database)).exists()
    )
    if new_sqlite:
        return None  # created at the newest schema when serve starts; data_dir is checked
    try:
        store = JobStore(settings.job_store_url)
        try:
            ping(store)
        finally:
            store.close()
    except SchemaError as exc:  # reachable, but its schema is not this cordt1's
        return Problem("error", setting, str(exc))
    except (SQLAlchemyError, ValueError, OSError) as exc:
        what = (
            "start the database server or fix database_url"
            if settings.database_url
            else "check that data_dir exists and is writable"
        )
        return Problem(
            "error", setting, f"job store {shown} unreachable: {_first_line(exc)}; {what}"
        )
    return None


def _broker_problem(settings: Settings) -> Problem | None:
    url = settings.celery_broker_url
    if url.startswith("filesystem://"):
        return None  # the embedded queue lives in data_dir, checked above
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=BROKER_TIMEOUT_S) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S
            )
    except Exception as exc:  # kombu raises each transport's own errors
        return Problem(
            "error",
            "broker_url",
            f"broker unreachable: {_first_line(exc)}; start it (e.g. Redis) or fix broker_url",
        )
    return None


def _echo_problem(settings: Settings, text: str, setting: str, timeout_s: float) -> Problem | None:
    destination = Destination.parse(text)
    try:
        tls = settings.send.client_tls() if destination.tls else None
        answered = echo(destination, settings.send.calling_ae, timeout_s=timeout_s, tls=tls)
    except ValueError as exc:
        return Problem("error", setting, f"{text}: {exc}")
    except Exception as exc:  # network stack errors: the peer is not usable now
        log.debug("C-ECHO to %s raised", text, exc_info=True)
        answered = False
        detail = f" ({_first_line(exc)})"
    else:
        detail = ""
    if answered:
        return None
    return Problem(
        "warning",
        setting,
        f"{text} does not answer C-ECHO now{detail}; results will be retried "
        f"(send.attempts = {settings.send.attempts}), check its address and that it knows "
        f"our AE title {settings.send.calling_ae}",
    )


def _check_peers(settings: Settings, timeout_s: float) -> list[Problem]:
    peers = [(text, "send.destinations") for text in settings.send.destinations]
    if settings.priors.source:
        peers.append((settings.priors.source, "priors.source"))
    if not peers:
        return []
    # pynetdicom and the SCU log a refused association in their own words (an ERROR among
    # them); the one line that matters here is ours
    noisy = [logging.getLogger(name) for name in ("pynetdicom", "dicom_node.scu")]
    levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.CRITICAL)
    try:
        with ThreadPoolExecutor(max_workers=min(8, len(peers))) as pool:
            found = list(pool.map(lambda p: _echo_problem(settings, p[0], p[1], timeout_s), peers))
    finally:
        for logger, level in zip(noisy, levels, strict=True):
            logger.setLevel(level)
    return [p for p in found if p is not None]


def check_settings(
    settings: Settings, *, echo_timeout_s: float = ECHO_TIMEOUT_S, ports: bool = True
) -> list[Problem]:
    """Every start-up check of `cordt1 serve`; an empty list when all is well.

    Parameters
    ----------
    settings : Settings
    echo_timeout_s : float
        Timeout of each destination's C-ECHO (they run in parallel).
    ports : bool
        Also check that the DICOM and HTTP ports are free.

    Returns
    -------
    list of Problem
        Errors first, then warnings, each naming its setting.
    """
    problems = _check_files(settings)
    if ports:
        problems += _check_ports(settings)
    if not any(p.setting == "data_dir" for p in problems) or settings.database_url:
        found = job_store_problem(settings)
        if found:
            problems.append(found)
    found = _broker_problem(settings)
    if found:
        problems.append(found)
    problems += _check_peers(settings, echo_timeout_s)
    return sorted(problems, key=lambda p: p.level != "error")
