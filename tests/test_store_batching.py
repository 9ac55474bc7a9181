"""Job-store rows of received instances are written in batches, and none is lost in a crash."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from dicom_node.scu import Destination, SendError, send
from service.jobs.store import InstanceBatcher, JobStore
from service.server import Service, record_unrecorded_files
from service.settings import Settings, load_settings
from tests.test_dicom_node_factories import make_mr


def _row(n: int) -> dict[str, Any]:
    uid = f"1.2.3.{n}"
    return {
        "sop_instance_uid": uid,
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.4",
        "component": "UNI",
        "path": f"/spool/{uid}.dcm",
        "calling_ae": "SCANNER",
        "received_at": float(n),
        "own_result": False,
        "info": {"sop_instance_uid": uid},
    }


class _CountingStore(JobStore):
    def __init__(self, url: str, *, fail: bool = False) -> None:
        super().__init__(url)
        self.transactions = 0
        self.fail = fail

    def record_instances(self, rows: Any) -> None:
        self.transactions += 1
        if self.fail:
            raise OSError("database is on fire")
        super().record_instances(rows)


def test_rows_from_many_threads_are_committed_in_few_transactions(tmp_path: Path) -> None:
    store = _CountingStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    batcher = InstanceBatcher(store, flush_ms=200)
    batcher.start()
    threads = [
        threading.Thread(target=lambda k=k: [batcher.submit(_row(k * 100 + i)) for i in range(50)])
        for k in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert batcher.flush()
    assert len(store.instance_infos()) == 200
    assert store.transactions < 20
    batcher.submit({**_row(0), "path": "/spool/again.dcm"})  # a re-send replaces the row
    batcher.close()
    assert store.instance_paths(["1.2.3.4"])["1.2.3.4"].count("/spool/again.dcm") == 1
    assert len(store.instance_infos()) == 200
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(_row(999))


def test_rows_of_a_failed_commit_are_retried_and_new_stores_refused_meanwhile(
    tmp_path: Path,
) -> None:
    store = _CountingStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}", fail=True)
    batcher = InstanceBatcher(store, flush_ms=10)
    batcher.submit(_row(1))
    assert not batcher.flush() and not batcher.healthy
    with pytest.raises(RuntimeError, match="job store not writable: OSError: database is on fire"):
        batcher.submit(_row(2))  # queued all the same
    assert store.instance_infos() == []
    store.fail = False
    deadline = time.monotonic() + 10
    while not batcher.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.flush()
    batcher.submit(_row(3))
    batcher.close()
    recorded = sorted(info["sop_instance_uid"] for info in store.instance_infos())
    assert recorded == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert batcher.failed_batches >= 1


def test_the_scp_answers_c211_while_the_job_store_refuses_rows(tmp_path: Path) -> None:
    service = Service(_settings(tmp_path, 10))
    broken = _CountingStore(f"sqlite:///{tmp_path / 'other.sqlite'}", fail=True)
    service.batcher = InstanceBatcher(broken, flush_ms=10)
    service.batcher.submit(_row(1))
    assert not service.batcher.flush()
    with pytest.raises(SendError, match="0xC211"):
        _send_exam(service, 1)
    assert len(list(service.spool.iter_files())) == 1  # the file is kept all the same
    service.batcher.close()


def test_invalid_batcher_settings_are_refused(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    with pytest.raises(ValueError, match="flush_ms"):
        InstanceBatcher(store, flush_ms=0)
    with pytest.raises(ValueError, match="max_batch"):
        InstanceBatcher(store, max_batch=0)


def _settings(tmp_path: Path, flush_ms: float) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        node={"host": "127.0.0.1", "port": 0, "min_free_mb": 0, "record_flush_ms": flush_ms},
    )


def _send_exam(service: Service, n: int) -> list[str]:
    service.scp.start()
    port = service.scp.port
    assert port is not None
    study, series = generate_uid(), generate_uid()
    exam = [make_mr(study_uid=study, series_uid=series, instance_number=i + 1) for i in range(n)]
    try:
        send(exam, Destination("CORDT1", "127.0.0.1", port), calling_ae="SCANNER", timeout_s=30)
    finally:
        service.scp.stop()
    return sorted(ds.SOPInstanceUID for ds in exam)


def test_service_records_every_received_instance(tmp_path: Path) -> None:
    service = Service(_settings(tmp_path, 20))
    sent = _send_exam(service, 12)
    assert service.batcher.flush()
    recorded = sorted(info["sop_instance_uid"] for info in service.store.instance_infos())
    assert recorded == sent
    service.batcher.close()


def test_instances_acknowledged_before_a_crash_are_recorded_at_the_next_start(
    tmp_path: Path,
) -> None:
    crashed = Service(_settings(tmp_path, 10_000))  # rows would wait 10 s: the crash wins
    sent = _send_exam(crashed, 5)
    assert crashed.store.instance_infos() == []  # acknowledged, spooled, not yet recorded
    restarted = Service(_settings(tmp_path, 20))
    restarted.recover()
    recorded = sorted(info["sop_instance_uid"] for info in restarted.store.instance_infos())
    assert recorded == sent
    (exam,) = restarted.tracker.ready(time.time() + 3600)  # the tracker knows them again
    assert sorted(i.sop_instance_uid for infos in exam.series.values() for i in infos) == sent
    assert record_unrecorded_files(restarted.store, restarted.spool, restarted.pseudonyms) == 0


def test_flush_and_close_do_not_wait_out_a_long_flush_interval(tmp_path: Path) -> None:
    store = _CountingStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    batcher = InstanceBatcher(store, flush_ms=60_000, max_batch=10)
    batcher.start()
    for i in range(35):
        batcher.submit(_row(i))
    started = time.monotonic()
    assert batcher.flush(timeout_s=20)
    assert time.monotonic() - started < 10  # the batch was due in a minute
    assert len(store.instance_infos()) == 35
    assert store.transactions == 4  # 10 + 10 + 10 + 5: max_batch holds, no wait between
    batcher.submit(_row(35))
    started = time.monotonic()
    batcher.close(timeout_s=20)
    assert time.monotonic() - started < 10
    assert len(store.instance_infos()) == 36


def test_rows_trickling_in_within_the_interval_share_one_transaction(tmp_path: Path) -> None:
    store = _CountingStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    batcher = InstanceBatcher(store, flush_ms=1000)
    batcher.start()
    for i in range(10):
        batcher.submit(_row(i))
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while len(store.instance_infos()) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store.instance_infos()) == 10
    assert store.transactions == 1
    batcher.close()
