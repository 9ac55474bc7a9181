"""`serve`'s reconciler: jobs whose lease expired are queued again, held ones never."""

from __future__ import annotations

import json
import time
from base64 import b64decode
from pathlib import Path

from service.jobs.store import JobState, JobStore
from service.server import Service
from service.settings import Settings


def _job(store: JobStore, study: str) -> int:
    return store.create_job(
        study_uid=study, patient_key="k", series_uids=[study], n_instances=1, complete=True
    )


def _queued_messages(data_dir: Path) -> list[tuple[str, list[int]]]:
    out = []
    for path in sorted((data_dir / "broker" / "queue").glob("*")):
        message = json.loads(path.read_text())
        body = json.loads(b64decode(message["body"]))
        out.append((message["headers"]["task"], body[0]))
    return out


def test_reconcile_takes_back_expired_leases_and_leaves_live_ones(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0, jobs={"lease_s": 30})
    service = Service(settings)
    store = service.store
    try:
        held, dead_runner, dead_sender, queued = (_job(store, f"1.{i}") for i in range(4))
        store.claim(held, "alive", lease_s=60)
        store.claim(dead_runner, "gone", lease_s=0.01)
        store.claim(dead_sender, "w", lease_s=60)
        store.finish(dead_sender, "w", JobState.SENDING, result={"run": 1}, wait_s=60)
        store.claim_send(dead_sender, "gone-too", lease_s=0.01)
        time.sleep(0.05)
        service.recover()  # what a restarted `serve` does
        assert store.get_job(held).state is JobState.RUNNING
        assert store.get_job(held).lease_owner == "alive"
        assert store.get_job(dead_runner).state is JobState.QUEUED
        assert store.get_job(dead_sender).state is JobState.SENDING
        assert not store.get_job(dead_sender).lease_stale()  # given time for the send
        messages = _queued_messages(settings.data_dir)
        assert sorted(messages) == sorted(
            [
                ("cordt1.process_job", [queued]),
                ("cordt1.process_job", [dead_runner]),
                ("cordt1.send_results", [dead_sender]),
            ]
        )
        assert service.reconcile() == []  # nothing stale any more: no new messages
        assert len(_queued_messages(settings.data_dir)) == 3
    finally:
        store.close()
