"""The one place that configures logging for `serve`, `worker` and every other command.

Text (default) or JSON lines (``log_format = "json"``: one object per line with ``time``,
``level``, ``logger``, ``process``, ``message`` and ``exception``), to stderr (under systemd
that is the journal) and, with ``log_file`` set, also to a size-rotated file
(``log_max_mb``, ``log_backups``). A worker started by `serve` writes to the same stderr
and to its own file beside ``log_file`` (``<name>-worker<suffix>``), so no two processes
rotate one file. Log messages never carry patient data: exams are named by Study UID, patients
only by their keyed pseudonym.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = ["LOG_LEVELS", "JsonFormatter", "configure_logging", "role_log_file"]

#: Accepted names for ``--log-level`` and ``log_level``.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Libraries whose INFO/DEBUG lines are per-association, per-object or per-font chatter.
NOISY_LOGGERS = ("pynetdicom", "highdicom", "matplotlib", "PIL", "fontTools", "alembic")
#: Marks the handlers this module installed, so a second call replaces them (and only them).
_OURS = "_cordt1_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (journald, Loki, Elastic)."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def role_log_file(log_file: Path, role: str) -> Path:
    """The log file of one process role beside ``log_file`` (``x.log`` -> ``x-worker.log``)."""
    if role == "serve":
        return log_file
    return log_file.with_name(f"{log_file.stem}-{role}{log_file.suffix}")


def configure_logging(
    level: str = "INFO",
    *,
    log_format: Literal["text", "json"] = "text",
    log_file: Path | None = None,
    max_mb: float = 50.0,
    backups: int = 5,
    role: str = "serve",
) -> None:
    """Send every logger's records to stderr and, optionally, a rotated file.

    Calling it again replaces what an earlier call installed (the CLI configures stderr at
    once, then again when the settings are known).

    Parameters
    ----------
    level : str
        One of :data:`LOG_LEVELS` (any case).
    log_format : {"text", "json"}
        Plain lines or JSON objects.
    log_file : Path or None
        Also write here, rotated at ``max_mb`` with ``backups`` old files kept.
    max_mb, backups : float, int
        Rotation size and count.
    role : str
        ``"serve"`` writes ``log_file`` itself; another role (``"worker"``) its own file
        beside it (:func:`role_log_file`).

    Raises
    ------
    ValueError
        If the level or format is unknown, the rotation settings are not positive or the
        log file's folder cannot be created.
    """
    name = level.upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', got {log_format!r}")
    if max_mb <= 0 or backups < 1:
        raise ValueError("log_max_mb must be > 0 and log_backups >= 1")
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        path = role_log_file(Path(log_file), role)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(
                logging.handlers.RotatingFileHandler(
                    path, maxBytes=int(max_mb * 1024 * 1024), backupCount=backups, delay=True
                )
            )
        except OSError as exc:
            raise ValueError(f"log_file {path} cannot be written: {exc}") from exc
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(getattr(logging, name))
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
