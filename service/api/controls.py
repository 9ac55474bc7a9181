"""Pause and resume of intake (the DICOM receiver) and of processing (job dispatch).

The state is a small JSON file in ``data_dir/run`` so that it survives a restart: a service
paused for maintenance stays paused until an operator resumes it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Controls", "PauseState"]

Part = Literal["intake", "processing"]
PARTS: tuple[Part, ...] = ("intake", "processing")


@dataclass(frozen=True)
class PauseState:
    """Whether one part is paused, since when and by whom."""

    paused: bool = False
    since: float | None = None
    by: str = ""


class Controls:
    """The pause switches, kept in ``path``.

    Parameters
    ----------
    path : Path
        JSON file (created on the first change).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def state(self) -> dict[str, PauseState]:
        """Each part's pause state (an unreadable file counts as nothing paused)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        out = {}
        for part in PARTS:
            entry = data.get(part) or {}
            out[part] = PauseState(
                paused=bool(entry.get("paused", False)),
                since=entry.get("since"),
                by=str(entry.get("by", "")),
            )
        return out

    def is_paused(self, part: Part) -> bool:
        """Whether ``part`` is paused now."""
        return self.state()[part].paused

    def set(self, part: Part, paused: bool, by: str) -> PauseState:
        """Pause or resume ``part``; returns its new state.

        Raises
        ------
        ValueError
            If ``part`` is not ``intake`` or ``processing``.
        """
        if part not in PARTS:
            raise ValueError(f"can pause intake or processing, not {part!r}")
        with self._lock:
            states = self.state()
            states[part] = PauseState(paused=paused, since=time.time() if paused else None, by=by)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({k: asdict(v) for k, v in states.items()}))
            os.replace(tmp, self.path)
        return states[part]
