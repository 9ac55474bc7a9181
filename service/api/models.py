"""The API's response and request bodies (they make the published OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "Control",
    "Destination",
    "ExamReceived",
    "JobDetail",
    "JobFile",
    "JobList",
    "JobSummary",
    "Login",
    "Me",
    "PauseInfo",
    "Queue",
    "Readiness",
]


class Login(BaseModel):
    """Credentials of a configured user."""

    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class Action(BaseModel):
    """Why an operator acts on a job (kept in the audit trail), and for a re-send where to."""

    reason: str = Field("from the web page", min_length=1, max_length=500)
    destination: str | None = Field(
        None, description="Re-send only: one AET@HOST:PORT instead of all of the job's."
    )


class Me(BaseModel):
    """The logged-in user."""

    name: str
    role: Literal["viewer", "operator"]


class JobSummary(BaseModel):
    """One job as listed: no patient names, IDs or birth dates, only the pseudonymous key."""

    id: int
    state: str
    study_uid: str
    patient_key: str = Field(description="Pseudonymous patient key (not the patient ID).")
    complete: bool
    reason: str = Field(description="Why the job started (complete exam or stale).")
    attempts: int
    error: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None = Field(description="Received-to-finished (or to now) time.")


class JobList(BaseModel):
    """One page of jobs, newest first."""

    total: int
    offset: int
    limit: int
    jobs: list[JobSummary]


class JobFile(BaseModel):
    """A rendered report file of a job (PNG figure or the PDF page)."""

    name: str
    media_type: str
    url: str


class JobEvent(BaseModel):
    """One audit trail line of a job."""

    time: float
    kind: str
    message: str


class JobDetail(JobSummary):
    """A job with its stage timings, outputs, deliveries and audit trail."""

    series_uids: list[str]
    queue_wait_s: float | None
    timings_s: dict[str, float] = Field(description="summary.json timings_s of the run.")
    qc_verdict: str | None
    qc_reasons: list[str] = Field(
        default_factory=list,
        description="Why the QC verdict is not a plain pass, one line each (summary.json "
        "qc.reasons), e.g. a scanner T1 map that was not used.",
    )
    dicom_outputs: list[str]
    files: list[JobFile]
    sent: dict[str, bool] = Field(description="Destination -> results delivered.")
    send_attempts: int
    events: list[JobEvent]


class PauseInfo(BaseModel):
    """Whether a part of the service is paused, since when, by whom."""

    paused: bool
    since: float | None
    by: str


class Control(BaseModel):
    """Pause state of intake (DICOM receiver) and processing (job dispatch)."""

    intake: PauseInfo
    processing: PauseInfo


class Retention(BaseModel):
    """Purges by retention: the last one and the totals over all."""

    last_purge_at: float | None
    last_purge_bytes: int | None
    purged_bytes_total: int
    purged_exams_total: int


class Queue(BaseModel):
    """The live queue: jobs by state, workers alive, what is paused and the last purge."""

    counts: dict[str, int]
    queue_depth: int
    workers_alive: list[str]
    control: Control
    active: list[JobSummary]
    retention: Retention


class ExamReceived(BaseModel):
    """A study received by the DICOM receiver."""

    study_uid: str
    n_instances: int
    n_series: int
    calling_ae: str
    first_received_at: float
    last_received_at: float


class AuditLine(BaseModel):
    """An association or refusal from the audit trail."""

    time: float
    kind: str
    message: str


class Exams(BaseModel):
    """Recently received studies and the latest associations."""

    exams: list[ExamReceived]
    associations: list[AuditLine]


class Destination(BaseModel):
    """A configured result destination and its last delivery state."""

    destination: str
    last_sent_at: float | None
    last_sent: str | None
    last_failure_at: float | None
    last_failure: str | None
    state: Literal["ok", "failing", "unknown"]


class CheckResult(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str


class Readiness(BaseModel):
    """`/readyz`: all checks must pass."""

    ready: bool
    checks: dict[str, CheckResult]


class Health(BaseModel):
    """`/healthz`: the process answers."""

    status: Literal["ok"]
