"""Run the API in a thread of `cordt1 serve` with uvicorn, on a socket bound up front.

Binding first means a port in use stops `serve` at start with one clear line instead of a
traceback in a thread that nobody reads.
"""

from __future__ import annotations

import socket
import threading

import uvicorn
from fastapi import FastAPI

__all__ = ["ApiServer"]


class ApiServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread.

    Parameters
    ----------
    app : FastAPI
    host : str
    port : int
        0 picks a free port (see :attr:`port` after :meth:`start`).
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind, then serve in a thread.

        Raises
        ------
        ValueError
            If the address cannot be bound (port in use, address not on this host).
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ValueError(
                f"api: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                "set api.port to a free port or api.enabled = false"
            ) from exc
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", workers=1
        )
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=[sock]), name="cordt1-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask uvicorn to finish and wait for it (at most 5 s)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
