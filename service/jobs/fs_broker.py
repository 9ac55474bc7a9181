"""The embedded broker: kombu's filesystem transport, with messages written atomically.

kombu's filesystem channel creates a message file under its final name and then writes it; a
worker polling the folder can take the file in between and read it empty, and its consumer
dies of the JSON error ("Unrecoverable error: JSONDecodeError"; seen by
``benchmarks/bench_soak.py`` after 23 exams). Here a message is written under a name the
readers ignore and renamed into place, so a reader sees a whole message or none.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

__all__ = ["Channel", "Transport"]


class Channel(filesystem.Channel):
    """Filesystem channel whose ``_put`` is one atomic rename."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = final + ".part"  # readers only take names ending in "<queue>.msg"
        try:
            with open(temporary, "wb") as out:
                out.write(str_to_bytes(dumps(payload)))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel
