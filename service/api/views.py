"""The API's answers built from job store rows (no patient data beyond the pseudonymous key)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from dicom_node.scu import Destination as DicomDestination
from service.api.controls import Controls
from service.api.models import (
    Control,
    Destination,
    JobDetail,
    JobEvent,
    JobFile,
    JobSummary,
    PauseInfo,
)
from service.jobs.store import Job, JobStore, destination_events

__all__ = [
    "MEDIA_TYPES",
    "control_view",
    "destination_view",
    "job_detail",
    "job_summary",
    "report_files",
]

MEDIA_TYPES = {".png": "image/png", ".pdf": "application/pdf"}


def job_summary(job: Job, now: float) -> JobSummary:
    end = job.finished_at if job.finished_at is not None else now
    return JobSummary(
        id=job.id,
        state=job.state.value,
        study_uid=job.study_uid,
        patient_key=job.patient_key,
        complete=job.complete,
        reason=job.reason,
        attempts=job.attempts,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        duration_s=round(end - job.created_at, 3),
    )


def report_files(job: Job) -> list[Path]:
    out_dir = job.result.get("out_dir")
    if not out_dir:
        return []
    figures = Path(out_dir) / "figures"
    if not figures.is_dir():
        return []
    return sorted(p for p in figures.iterdir() if p.suffix in MEDIA_TYPES and p.is_file())


def job_detail(store: JobStore, job: Job, now: float) -> JobDetail:
    summary = job.result.get("summary", {})
    timings = summary.get("timings_s", {}) if isinstance(summary, dict) else {}
    qc = summary.get("qc", {}) if isinstance(summary, dict) else {}
    files = [
        JobFile(
            name=p.name,
            media_type=MEDIA_TYPES[p.suffix],
            url=f"/api/jobs/{job.id}/files/{p.name}",
        )
        for p in report_files(job)
    ]
    return JobDetail(
        **job_summary(job, now).model_dump(),
        series_uids=list(job.series_uids),
        queue_wait_s=(
            round(job.started_at - job.created_at, 3) if job.started_at is not None else None
        ),
        timings_s={k: float(v) for k, v in timings.items()},
        qc_verdict=qc.get("verdict") if isinstance(qc, dict) else None,
        qc_reasons=_qc_reasons(qc),
        dicom_outputs=[Path(p).name for p in job.result.get("dicom", [])],
        files=files,
        sent={str(k): bool(v) for k, v in job.result.get("sent", {}).items()},
        send_attempts=int(job.result.get("send_attempts", 0)),
        events=[
            JobEvent(time=e["time"], kind=e["kind"], message=e["message"])
            for e in store.events(job_id=job.id, limit=100)
        ],
    )


def _qc_reasons(qc: object) -> list[str]:
    """The QC reasons of a run's summary (``qc.reasons``), as text lines."""
    reasons = qc.get("reasons") if isinstance(qc, dict) else None
    return [str(reason) for reason in reasons] if isinstance(reasons, list) else []


def control_view(controls: Controls) -> Control:
    states = controls.state()
    return Control(
        intake=PauseInfo(**vars(states["intake"])),
        processing=PauseInfo(**vars(states["processing"])),
    )


def destination_view(store: JobStore, text: str) -> Destination:
    try:
        needle = str(DicomDestination.parse(text))
    except ValueError:
        needle = text
    found = destination_events(store, needle)
    sent, failed = found["sent"], found["failed"]
    if failed is not None and (sent is None or failed["id"] > sent["id"]):
        state: Literal["ok", "failing", "unknown"] = "failing"
    elif sent is not None:
        state = "ok"
    else:
        state = "unknown"
    return Destination(
        destination=text,
        last_sent_at=sent["time"] if sent else None,
        last_sent=sent["message"] if sent else None,
        last_failure_at=failed["time"] if failed else None,
        last_failure=failed["message"] if failed else None,
        state=state,
    )
