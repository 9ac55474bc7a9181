"""Throw-away Redis and PostgreSQL servers for fault tests: own port, own folder, restartable.

The machine's own servers (Redis on 6379, PostgreSQL on 5432) are never touched: each server
here lives in a temporary folder, listens on a free loopback port and is stopped with the
test. :meth:`restart` stops it the hard way (SIGKILL for Redis, ``pg_ctl -m immediate`` for
PostgreSQL, as a crash would) and starts it again on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from service.phantom.pacs import free_port, wait_for_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ThrowawayRedis:
    """``redis-server`` on a free port without persistence (a restart loses every message).

    Parameters
    ----------
    folder : Path
        Working folder (log file).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        """Start and wait until the port answers."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout_s=20)
        return self

    def stop(self, *, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``hard``) and wait until it has gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            self.process.wait(timeout=30)

    def restart(self, down_s: float = 0.0) -> None:
        """Kill, stay down ``down_s`` seconds, start again on the same port (empty)."""
        self.stop(hard=True)
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> ThrowawayRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ThrowawayPostgres:
    """A PostgreSQL 15 cluster of its own (initdb as ``postgres``, own port and socket folder).

    The data folder is a fresh one directly under the system's temporary folder (the
    ``postgres`` user cannot enter pytest's private ``tmp_path``) and is removed by
    :meth:`close`.
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cordt1-pg-"))
        self.port = free_port()

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database ``cordt1``."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/cordt1"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _ctl(self, *args: str) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.folder), *args)

    def init(self) -> ThrowawayPostgres:
        """initdb, start, create the database ``cordt1``."""
        assert (PG_BIN / "initdb").exists(), "PostgreSQL 15 is not installed"
        assert os.geteuid() == 0, "a throw-away cluster needs root (initdb runs as postgres)"
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.folder),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        self.start()
        subprocess.run(
            [
                *("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"),
                *("-c", "create database cordt1"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._ctl("-l", str(self.folder / "server.log"), "-w", "-t", "60", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop (``fast``; ``immediate`` is a crash: no checkpoint, connections cut)."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop it as a crash would, stay down ``down_s`` seconds, start it again."""
        self.stop("immediate")
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop if running and remove the data folder."""
        if (self.folder / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.init()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
