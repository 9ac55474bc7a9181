"""Worker heartbeats: each `cordt1 worker` touches a file in ``data_dir/run/workers``.

`/readyz` and `cordt1 status` count the workers whose file is recent. Workers on other hosts
share ``data_dir`` (see docs/operations.md), so their heartbeats are seen too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

__all__ = ["Heartbeat", "alive_workers"]


def heartbeat_dir(data_dir: Path) -> Path:
    """The folder of the heartbeat files."""
    return data_dir / "run" / "workers"


class Heartbeat:
    """A daemon thread rewriting this process's heartbeat file every ``interval_s``.

    Parameters
    ----------
    data_dir : Path
    name : str
        Worker name (the file is ``<name>.json``).
    interval_s : float
    """

    def __init__(self, data_dir: Path, name: str, interval_s: float = 5.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval_s must be > 0, got {interval_s}")
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
        self.path = heartbeat_dir(data_dir) / f"{safe}.json"
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cordt1-heartbeat", daemon=True)

    def beat(self) -> None:
        """Write the heartbeat file now."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
        )
        os.replace(tmp, self.path)

    def start(self) -> None:
        """Beat now and then every ``interval_s`` until :meth:`stop`."""
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the file (a cleanly stopped worker is not alive)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s)
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            # a full or read-only disk: /readyz will say the worker is not alive
            with contextlib.suppress(OSError):
                self.beat()


def alive_workers(data_dir: Path, max_age_s: float, now: float | None = None) -> list[str]:
    """Names of the workers whose heartbeat is at most ``max_age_s`` old."""
    folder = heartbeat_dir(data_dir)
    now = time.time() if now is None else now
    alive = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if now - path.stat().st_mtime <= max_age_s:
                alive.append(path.stem)
        except OSError:
            continue
    return alive
