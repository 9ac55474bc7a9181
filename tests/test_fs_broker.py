"""The embedded broker writes each message whole before a reader can see it."""

from __future__ import annotations

from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

from service.jobs.celery_app import FILESYSTEM_TRANSPORT


def test_a_message_being_written_is_not_taken_and_a_written_one_is(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(tmp_path),
        "store_processed": True,
    }
    with Connection(
        "filesystem://", transport=FILESYSTEM_TRANSPORT, transport_options=options
    ) as conn:
        channel = conn.channel()
        # what a writer leaves while it is still writing (kombu's own writer would leave an
        # empty "<...>.jobs.msg" here, which a reader takes and fails to parse)
        (queue / "0000_writer.jobs.msg.part").write_bytes(b"")
        channel._put("jobs", {"job": 7})
        assert channel._get("jobs") == {"job": 7}
        with pytest.raises(Empty):
            channel._get("jobs")
        assert [p.name for p in queue.iterdir()] == ["0000_writer.jobs.msg.part"]
