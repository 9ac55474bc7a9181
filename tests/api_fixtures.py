"""A job store with a processed, a failed and a queued job, and the API on it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from service.api.controls import Controls
from service.api.passwords import hash_password
from service.jobs.celery_app import create_app
from service.jobs.store import JobState, JobStore
from service.settings import Settings

PASSWORDS = {"vera": "viewer-pass-1", "otto": "operator-pass-1"}
_HASHES: dict[str, str] = {}


def users() -> list[dict[str, str]]:
    """A viewer (vera) and an operator (otto); hashes made once per test session."""
    if not _HASHES:
        _HASHES.update({name: hash_password(pw) for name, pw in PASSWORDS.items()})
    return [
        {"name": "vera", "password_hash": _HASHES["vera"], "role": "viewer"},
        {"name": "otto", "password_hash": _HASHES["otto"], "role": "operator"},
    ]


@dataclass
class Seeded:
    """The objects the API is built on and the ids of the seeded jobs."""

    settings: Settings
    store: JobStore
    celery: Celery
    controls: Controls
    done_id: int
    failed_id: int
    queued_id: int


def seed(
    data_dir: Path,
    *,
    out_dir: Path | None = None,
    summary: dict[str, Any] | None = None,
    **settings: Any,
) -> Seeded:
    """Settings, store and Celery app (embedded queue) in ``data_dir`` with three jobs.

    ``out_dir`` (a job results folder with ``figures/``) and ``summary`` are the done job's;
    without them a small figures folder is written.
    """
    config = Settings(
        data_dir=data_dir,
        api={"users": users()},
        send={"destinations": ["PACS@127.0.0.1:11112"]},
        **settings,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(config.job_store_url)
    celery = create_app(config)
    controls = Controls(data_dir / "run" / "pause.json")
    if out_dir is None:
        out_dir = data_dir / "results" / "job-000001"
        (out_dir / "figures").mkdir(parents=True)
        (out_dir / "figures" / "t1_overlay.png").write_bytes(_PNG)
        (out_dir / "figures" / "report.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
        (out_dir / "figures" / "notes.txt").write_text("not a report file")
    if summary is None:
        summary = {
            "timings_s": {"load": 1.25, "compute": 7.5, "write_results": 3.0},
            "qc": {
                "verdict": "warn",
                "reasons": [
                    "warn: slab 1: scanner T1 map not used: T1 map series 7: no value is "
                    "positive (all values <= 0)"
                ],
                "metrics": {},
            },
        }
    for n, (study, ae) in enumerate([("1.2.3.100", "SCANNER"), ("1.2.3.200", "SCANNER")]):
        for i in range(3):
            store.record_instance(
                sop_instance_uid=f"{study}.{i}",
                study_uid=study,
                series_uid=f"{study}.1",
                component="uni",
                path=f"/nowhere/{study}.{i}.dcm",
                calling_ae=ae,
                received_at=time.time() - 100 + n,
                own_result=False,
                info={},
            )
    store.log_event(
        "association", "SCANNER@127.0.0.1 accepted, ended: released, 3 instance(s) stored"
    )
    ids = []
    for study in ("1.2.3.100", "1.2.3.200", "1.2.3.300"):
        ids.append(
            store.create_job(
                study_uid=study,
                patient_key=f"key{study[-3:]}",
                series_uids=[f"{study}.1"],
                n_instances=3,
                complete=True,
                reason="complete",
            )
        )
    done_id, failed_id, queued_id = ids
    store.claim(done_id)
    result = {
        "out_dir": str(out_dir),
        "dicom": [str(out_dir / "dicom" / "t1_map.dcm")],
        "summary": summary,
        "sent": {},
        "send_attempts": 0,
    }
    store.set_state(done_id, JobState.SENDING, result=result)
    store.log_event(
        "results.sent", f"job {done_id}: 5 object(s) sent to PACS@127.0.0.1:11112", done_id
    )
    result = {**result, "sent": {"PACS@127.0.0.1:11112": True}, "send_attempts": 1}
    store.set_state(done_id, JobState.DONE, error="", result=result)
    store.claim(failed_id)
    store.set_state(
        failed_id, JobState.FAILED, error="series 1.2.3.200.1: no received file is left"
    )
    return Seeded(config, store, celery, controls, done_id, failed_id, queued_id)


# A 1x1 PNG (valid file signature and chunks).
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


def login(client: Any, name: str) -> None:
    """Log ``client`` in as one of the seeded users."""
    response = client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    assert response.status_code == 200, response.text


def broker_messages(data_dir: Path) -> list[dict[str, Any]]:
    """Messages waiting in the embedded Celery queue (their headers)."""
    folder = data_dir / "broker" / "queue"
    out = []
    for path in sorted(folder.glob("*")):
        out.append(json.loads(path.read_text())["headers"])
    return out
