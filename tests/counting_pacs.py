"""A test PACS that keeps every C-STORE as a new file, so a duplicate shows as two files.

It answers C-FIND (Study Root, IMAGE level) about what it holds, as a real PACS does, and can
be made slow: ``delay_s`` after storing each object before it answers (the window in which a
killed sender leaves an object *in doubt*).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)


class CountingPacs:
    """Listen on a free loopback port; every C-STORE becomes ``NNNNN-<SOP UID>.dcm``."""

    def __init__(self, folder: Path, *, ae_title: str = "COUNTPACS", delay_s: float = 0.0):
        self.folder = folder
        self.ae_title = ae_title
        self.delay_s = delay_s
        self.port = 0
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> CountingPacs:
        """Start listening (in threads of this process)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.maximum_associations = 20
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_FIND, self._on_find)]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()

    def __enter__(self) -> CountingPacs:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def destination(self) -> str:
        """``AET@127.0.0.1:PORT``."""
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def counts(self) -> Counter[str]:
        """How many times each SOP Instance UID was stored."""
        return Counter(p.stem.split("-", 1)[1] for p in self.folder.glob("*.dcm"))

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            number = next(self._counter)
        data = event.encoded_dataset()
        temporary = self.folder / f".{number:05d}.part"
        temporary.write_bytes(data)
        temporary.rename(self.folder / f"{number:05d}-{uid}.dcm")
        if self.delay_s:
            time.sleep(self.delay_s)
        return 0x0000

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        wanted = str(query.get("SOPInstanceUID", "") or "")
        if str(query.get("QueryRetrieveLevel", "")) != "IMAGE" or not wanted:
            yield 0xA900, None  # identifier does not match SOP class: only what the tests use
            return
        if self.counts().get(wanted):
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.StudyInstanceUID = query.StudyInstanceUID
            answer.SeriesInstanceUID = query.SeriesInstanceUID
            answer.SOPInstanceUID = wanted
            yield 0xFF00, answer
        yield 0x0000, None
