"""The job store: received instances, jobs and an audit trail of events.

SQLite (embedded, default) or PostgreSQL (several hosts), through SQLAlchemy Core. The store is
the source of truth: the broker only carries job ids. A worker holds a job through a *lease*
(owner, expiry) that it renews while it works; a job whose lease expired is taken again (a
redelivered message, or the reconciler in ``cordt1 serve``), one whose lease is alive never is.
Every result object's delivery is recorded per destination (table ``deliveries``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine

from service.jobs.schema import check_schema

__all__ = [
    "Delivery",
    "DeliveryStatus",
    "InstanceBatcher",
    "Job",
    "JobState",
    "JobStore",
    "count_events",
    "count_instances",
    "destination_events",
    "exam_moment_columns",
    "job_page",
    "ping",
    "received_exams",
    "recent_events",
    "stage_timings",
]

LOGGER = logging.getLogger(__name__)


class JobState(StrEnum):
    """Life cycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (JobState.QUEUED, JobState.RUNNING, JobState.SENDING)
FINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
LEASED = (JobState.RUNNING, JobState.SENDING)


class DeliveryStatus(StrEnum):
    """What is known of one result object at one destination."""

    #: A C-STORE was started and not confirmed (crash or timeout): in doubt.
    SENDING = "sending"
    #: The destination confirmed storage (success or warning status).
    SENT = "sent"
    #: The destination answered with a failure status, or the association failed.
    FAILED = "failed"
    #: An operator asked for it to be sent again (``cordt1 resend``).
    RESEND = "resend"


metadata = MetaData()

#: DICOM DA/TM are compared as text: byte order on PostgreSQL too (as Python compares them).
MOMENT_CHARS = 32
_MOMENT_TYPE = String(MOMENT_CHARS).with_variant(String(MOMENT_CHARS, collation="C"), "postgresql")

instances = Table(
    "instances",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("study_uid", String(64), index=True, nullable=False),
    Column("series_uid", String(64), index=True, nullable=False),
    Column("component", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("calling_ae", String(16), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("own_result", Boolean, nullable=False, default=False),
    Column("info", Text, nullable=False),
    # Schema 2: the pseudonymous patient key (also in ``info``), to find a patient's studies.
    Column("patient_key", String(64), nullable=False, server_default="", default=""),
    Index("ix_instances_patient_key", "patient_key", "study_uid"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), index=True, nullable=False),
    Column("patient_key", String(64), index=True, nullable=False, default=""),
    Column("state", String(16), index=True, nullable=False),
    Column("complete", Boolean, nullable=False, default=True),
    Column("reason", Text, nullable=False, default=""),
    Column("series", Text, nullable=False),
    Column("n_instances", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=False, default=""),
    Column("result", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("lease_owner", String(128), nullable=False, default=""),
    Column("lease_expires_at", Float),
    # Schema 2: StudyDate/StudyTime of the result summary's exam ("" when the header had none,
    # NULL while the job has no summary), indexed with the patient to find priors by query.
    Column("study_date", _MOMENT_TYPE, nullable=True),
    Column("study_time", _MOMENT_TYPE, nullable=True),
    Index("ix_jobs_prior", "patient_key", "state", "study_date", "study_time"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("run", Integer, nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("destination", String(300), nullable=False),
    Column("status", String(16), nullable=False),
    Column("time", Float, nullable=False),
    Column("detail", Text, nullable=False, default=""),
    UniqueConstraint("job_id", "run", "sop_instance_uid", "destination", name="uq_delivery"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=True, index=True),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
)


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    id: int
    study_uid: str
    patient_key: str
    state: JobState
    complete: bool
    reason: str
    series_uids: tuple[str, ...]
    attempts: int
    error: str
    result: dict[str, Any]
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    lease_owner: str = ""
    lease_expires_at: float | None = None

    def lease_stale(self, now: float | None = None) -> bool:
        """Whether the job is running or sending under a lease nobody renewed in time."""
        if self.state not in LEASED:
            return False
        moment = time.time() if now is None else now
        return self.lease_expires_at is None or self.lease_expires_at < moment

    @classmethod
    def _from_row(cls, row: Any) -> Job:
        return cls(
            id=row.id,
            study_uid=row.study_uid,
            patient_key=row.patient_key,
            state=JobState(row.state),
            complete=bool(row.complete),
            reason=row.reason,
            series_uids=tuple(json.loads(row.series)),
            attempts=row.attempts,
            error=row.error,
            result=json.loads(row.result),
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            lease_owner=row.lease_owner or "",
            lease_expires_at=row.lease_expires_at,
        )


@dataclass(frozen=True)
class Delivery:
    """One row of the deliveries table."""

    job_id: int
    run: int
    sop_instance_uid: str
    destination: str
    status: DeliveryStatus
    time: float
    detail: str


def _lease_expired(now: float) -> Any:
    """SQL condition: nobody holds the job's lease any more at ``now``."""
    return or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < now)


def _held_by(job_id: int, owner: str) -> Any:
    """SQL condition: job ``job_id`` is in a leased state and ``owner`` holds its lease."""
    return and_(
        jobs.c.id == job_id,
        jobs.c.lease_owner == owner,
        jobs.c.state.in_([s.value for s in LEASED]),
    )


def exam_moment_columns(result: Mapping[str, Any]) -> dict[str, str | None]:
    """The ``study_date``/``study_time`` columns of a job with this result.

    The exam's StudyDate and StudyTime from the result's summary (empty strings when the header
    had none, as :func:`service.pipeline.history.exam_moment` reads them); NULL when the result
    has no summary (such a job is never anybody's prior).
    """
    summary = result.get("summary")
    if not isinstance(summary, Mapping):
        return {"study_date": None, "study_time": None}
    exam = summary.get("exam") or {}
    if not isinstance(exam, Mapping):
        exam = {}
    return {
        "study_date": str(exam.get("study_date") or "")[:MOMENT_CHARS],
        "study_time": str(exam.get("study_time") or "")[:MOMENT_CHARS],
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class JobStore:
    """Access to the job store.

    Parameters
    ----------
    url : str
        SQLAlchemy URL (``sqlite:////abs/path/jobs.sqlite`` or
        ``postgresql+psycopg2://user@host/db``).

    Raises
    ------
    ValueError
        If ``url`` is not an SQLAlchemy URL.
    service.jobs.schema.SchemaError
        If the store's schema is older than this cordt1 (``cordt1 db upgrade``) or newer;
        an empty store is created at the newest schema (see :mod:`service.jobs.schema`).
    """

    def __init__(self, url: str) -> None:
        if not url or "://" not in url:
            raise ValueError(f"job store URL must be an SQLAlchemy URL, got {url!r}")
        self.url = url
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            check_schema(self.engine)
        except Exception:
            self.engine.dispose()
            raise

    def close(self) -> None:
        """Release every connection."""
        self.engine.dispose()

    # --- instances -------------------------------------------------------------------------
    def record_instance(
        self,
        *,
        sop_instance_uid: str,
        study_uid: str,
        series_uid: str,
        component: str,
        path: str,
        calling_ae: str,
        received_at: float,
        own_result: bool,
        info: dict[str, Any],
    ) -> None:
        """Insert or replace the row of one received instance (idempotent)."""
        row = {
            "sop_instance_uid": sop_instance_uid,
            "study_uid": study_uid,
            "series_uid": series_uid,
            "component": component,
            "path": path,
            "calling_ae": calling_ae,
            "received_at": received_at,
            "own_result": own_result,
            "info": json.dumps(info, sort_keys=True),
            "patient_key": str(info.get("patient_key") or ""),
        }
        self.record_instances([row])

    def record_instances(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace the rows of several received instances in one transaction.

        Parameters
        ----------
        rows : sequence of mapping
            Rows with the keys of :meth:`record_instance` (``info`` already JSON text) and
            ``patient_key`` (read from ``info`` when absent); a later row of the same SOP
            Instance UID replaces an earlier one.
        """
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:
            values = dict(row)
            if "patient_key" not in values:
                values["patient_key"] = str(json.loads(values["info"]).get("patient_key") or "")
            latest[str(row["sop_instance_uid"])] = values
        if not latest:
            return
        with self.engine.begin() as conn:
            existing: set[str] = set()
            uids = list(latest)
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                existing.update(
                    r.sop_instance_uid
                    for r in conn.execute(
                        select(instances.c.sop_instance_uid).where(
                            instances.c.sop_instance_uid.in_(chunk)
                        )
                    )
                )
            fresh = [row for uid, row in latest.items() if uid not in existing]
            if fresh:
                conn.execute(insert(instances), fresh)
            for uid in existing:
                conn.execute(
                    update(instances)
                    .where(instances.c.sop_instance_uid == uid)
                    .values(**latest[uid])
                )

    def recorded_paths(self) -> set[str]:
        """The spool path of every recorded instance (to find files a crash left unrecorded)."""
        with self.engine.connect() as conn:
            return {row.path for row in conn.execute(select(instances.c.path))}

    def instance_infos(self, *, include_own: bool = False) -> list[dict[str, Any]]:
        """Every recorded instance's header summary, oldest first."""
        query = select(instances.c.info).order_by(instances.c.received_at)
        if not include_own:
            query = query.where(instances.c.own_result.is_(False))
        with self.engine.connect() as conn:
            return [json.loads(r.info) for r in conn.execute(query)]

    def own_result_instances(self, received_before: float) -> list[tuple[str, str]]:
        """(SOP Instance UID, spool path) of our own results sent back to us before a time.

        They are never inputs of a job, so only their age decides when they go.
        """
        query = select(instances.c.sop_instance_uid, instances.c.path).where(
            instances.c.own_result.is_(True), instances.c.received_at < received_before
        )
        with self.engine.connect() as conn:
            return [(row.sop_instance_uid, row.path) for row in conn.execute(query)]

    def forget_instances(self, sop_instance_uids: Sequence[str]) -> int:
        """Delete the rows of instances whose files are gone; the number deleted."""
        if not sop_instance_uids:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(
                delete(instances).where(instances.c.sop_instance_uid.in_(list(sop_instance_uids)))
            ).rowcount

    def patient_study_uids(self, patient_key: str) -> set[str]:
        """The studies of which instances of this patient were received (one indexed query).

        Our own results sent back to us are not counted.
        """
        query = (
            select(instances.c.study_uid)
            .where(instances.c.patient_key == patient_key, instances.c.own_result.is_(False))
            .distinct()
        )
        with self.engine.connect() as conn:
            return {row.study_uid for row in conn.execute(query)}

    def instance_paths(self, series_uids: Sequence[str]) -> dict[str, list[str]]:
        """Spool paths of the instances of each series."""
        out: dict[str, list[str]] = {uid: [] for uid in series_uids}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances.c.series_uid, instances.c.path).where(
                    instances.c.series_uid.in_(list(series_uids))
                )
            )
            for row in rows:
                out[row.series_uid].append(row.path)
        return out

    # --- jobs ------------------------------------------------------------------------------
    def create_job(
        self,
        *,
        study_uid: str,
        patient_key: str,
        series_uids: Sequence[str],
        n_instances: int,
        complete: bool,
        reason: str = "",
    ) -> int:
        """Record a new queued job and return its id."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(jobs).values(
                    study_uid=study_uid,
                    patient_key=patient_key,
                    state=JobState.QUEUED.value,
                    complete=complete,
                    reason=reason,
                    series=json.dumps(sorted(series_uids)),
                    n_instances=n_instances,
                    attempts=0,
                    error="",
                    result="{}",
                    created_at=now,
                    updated_at=now,
                )
            )
            job_id = int(result.inserted_primary_key[0])
            self._event(
                conn, "job.created", f"job {job_id} queued ({reason or 'complete'})", job_id
            )
        return job_id

    def has_job(self, study_uid: str, series_uids: Sequence[str], n_instances: int) -> bool:
        """Whether a job for exactly these series and instance count exists already."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.study_uid == study_uid,
                    jobs.c.series == json.dumps(sorted(series_uids)),
                    jobs.c.n_instances == n_instances,
                )
            ).first()
        return row is not None

    def get_job(self, job_id: int) -> Job:
        """The job with this id.

        Raises
        ------
        KeyError
            If there is no such job.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job._from_row(row)

    def list_jobs(
        self, *, limit: int = 100, states: Sequence[JobState] | None = None
    ) -> list[Job]:
        """Most recent jobs first."""
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if states:
            query = query.where(jobs.c.state.in_([s.value for s in states]))
        with self.engine.connect() as conn:
            return [Job._from_row(r) for r in conn.execute(query)]

    def claim(self, job_id: int, owner: str = "", lease_s: float = 60.0) -> int | None:
        """Take a job to process it, under a lease; the run number, or None if not taken.

        A queued job is taken, and so is a running one whose lease expired (its worker died
        or hangs); a job another worker holds under a live lease, or a finished one, is not.

        Parameters
        ----------
        job_id : int
        owner : str
            Who holds the lease (host, process, run); renewals and the outcome must name it.
        lease_s : float
            The lease lasts this long unless renewed (:meth:`renew`).
        """
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        now = time.time()
        with self.engine.begin() as conn:
            before = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    or_(
                        jobs.c.state == JobState.QUEUED.value,
                        and_(jobs.c.state == JobState.RUNNING.value, _lease_expired(now)),
                    ),
                )
                .values(
                    state=JobState.RUNNING.value,
                    attempts=jobs.c.attempts + 1,
                    started_at=now,
                    updated_at=now,
                    lease_owner=owner,
                    lease_expires_at=now + lease_s,
                )
            )
            if result.rowcount != 1 or before is None:
                return None
            run = int(before.attempts) + 1
            taken = ""
            if before.state == JobState.RUNNING.value:
                taken = f" (lease of {before.lease_owner or 'an earlier worker'} had expired)"
            self._event(conn, "job.running", f"job {job_id} run {run} started{taken}", job_id)
        return run

    def claim_send(self, job_id: int, owner: str, lease_s: float = 60.0) -> bool:
        """Take a job whose results wait to be sent, under a lease; False if not taken.

        Taken when nobody holds it (waiting for its first or next attempt) or its sender's
        lease expired.
        """
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.state == JobState.SENDING.value,
                    or_(jobs.c.lease_owner == "", _lease_expired(now)),
                )
                .values(lease_owner=owner, lease_expires_at=now + lease_s, updated_at=now)
            )
        return result.rowcount == 1

    def renew(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease; False when it lost the job (cancelled, or taken over)."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs).where(_held_by(job_id, owner)).values(lease_expires_at=now + lease_s)
            )
        return result.rowcount == 1

    def finish(
        self,
        job_id: int,
        owner: str,
        state: JobState,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        wait_s: float = 60.0,
    ) -> bool:
        """Record the outcome of ``owner``'s step and give up its lease; False if it lost it.

        A worker that lost its lease (an operator cancelled the job, or its lease expired and
        another worker took the job) changes nothing. Moving to ``running`` or ``sending``
        leaves the job unheld for ``wait_s`` (the next step's message or a retry's delay); if
        nobody takes it by then, the reconciler queues that step again.
        """
        now = time.time()
        values = self._state_values(state, now, error=error, result=result)
        values["lease_owner"] = ""
        values["lease_expires_at"] = now + wait_s if state in LEASED else None
        with self.engine.begin() as conn:
            updated = conn.execute(update(jobs).where(_held_by(job_id, owner)).values(**values))
            if updated.rowcount != 1:
                return False
            message = f"job {job_id} {state.value}" + (f": {error}" if error else "")
            self._event(conn, f"job.{state.value}", message, job_id)
        return True

    def set_state(
        self,
        job_id: int,
        state: JobState,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Change a job's state unconditionally, with its error text or result summary.

        Workers use :meth:`finish` (which checks their lease); this is for single-process use
        and tests.
        """
        now = time.time()
        values = self._state_values(state, now, error=error, result=result)
        if state not in LEASED:
            values["lease_owner"] = ""
            values["lease_expires_at"] = None
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            message = f"job {job_id} {state.value}" + (f": {error}" if error else "")
            self._event(conn, f"job.{state.value}", message, job_id)

    @staticmethod
    def _state_values(
        state: JobState, now: float, *, error: str | None, result: dict[str, Any] | None
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"state": state.value, "updated_at": now}
        if error is not None:
            values["error"] = error
        if result is not None:
            values["result"] = json.dumps(result, sort_keys=True, default=str)
            values.update(exam_moment_columns(result))
        if state in FINAL:
            values["finished_at"] = now
        return values

    def requeue(self, job_id: int, *, note: str = "queued again") -> None:
        """Put a job back in the queue to be processed again (retry), dropping any lease."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.QUEUED.value,
                    error="",
                    updated_at=time.time(),
                    lease_owner="",
                    lease_expires_at=None,
                    finished_at=None,
                )
            )
            self._event(conn, "job.requeued", f"job {job_id} {note}", job_id)

    def resume_sending(self, job_id: int, result: dict[str, Any], *, note: str) -> None:
        """Put a job with results back to ``sending`` (retry or re-send), nobody holding it."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.SENDING.value,
                    error="",
                    result=json.dumps(result, sort_keys=True, default=str),
                    **exam_moment_columns(result),
                    updated_at=now,
                    lease_owner="",
                    lease_expires_at=now,
                    finished_at=None,
                )
            )
            self._event(conn, "job.sending", f"job {job_id} {note}", job_id)

    def cancel(self, job_id: int, *, operator: str, reason: str) -> bool:
        """End a job that is not finished as cancelled; False if it already was finished."""
        now = time.time()
        error = f"cancelled by {operator}: {reason}"
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_([s.value for s in UNFINISHED]))
                .values(
                    state=JobState.CANCELLED.value,
                    error=error,
                    updated_at=now,
                    finished_at=now,
                    lease_owner="",
                    lease_expires_at=None,
                )
            )
            if updated.rowcount != 1:
                return False
            self._event(conn, "job.cancelled", f"job {job_id} {error}", job_id)
        return True

    def prior_summary(
        self, *, patient_key: str, study_uid: str, job_id: int, moment: tuple[str, str]
    ) -> dict[str, Any] | None:
        """The result summary of the patient's latest finished exam before ``moment``.

        One query on the index ``ix_jobs_prior``, with the selection rule of
        :func:`service.pipeline.history.choose_prior` over the patient's other done jobs that
        have a summary (not this job, not this study): with a study date, the latest one dated
        before it (date, then time), or the latest processed when none of them is dated;
        without a study date, the latest by date and time, then by job id.

        Parameters
        ----------
        patient_key : str
            The pseudonymous patient key; empty: no prior.
        study_uid : str
            The current exam (never its own prior).
        job_id : int
            The current job.
        moment : tuple of str
            (StudyDate, StudyTime) of the current exam (DICOM DA, TM; empty if unknown).

        Returns
        -------
        dict or None
            The prior's summary, or ``None`` when there is none.
        """
        if not patient_key:
            return None

        def candidates(table: Any) -> list[Any]:
            return [
                table.c.patient_key == patient_key,
                table.c.state == JobState.DONE.value,
                table.c.study_date.is_not(None),
                table.c.study_uid != study_uid,
                table.c.id != job_id,
            ]

        conditions = candidates(jobs)
        study_date, study_time = moment
        if study_date:
            other = jobs.alias("dated")
            some_dated = exists().where(*candidates(other), other.c.study_date != "")
            before = and_(
                jobs.c.study_date != "",
                or_(
                    jobs.c.study_date < study_date,
                    and_(jobs.c.study_date == study_date, jobs.c.study_time < study_time),
                ),
            )
            conditions.append(or_(before, ~some_dated))
        query = (
            select(jobs.c.result)
            .where(*conditions)
            .order_by(jobs.c.study_date.desc(), jobs.c.study_time.desc(), jobs.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        summary = json.loads(row.result).get("summary")
        return dict(summary) if isinstance(summary, Mapping) else None

    def study_finished(self, study_uid: str) -> bool:
        """Whether a job of this study ended done or failed (one indexed query).

        Parameters
        ----------
        study_uid : str
            The StudyInstanceUID (a prior fetched from the PACS, say).
        """
        query = (
            select(jobs.c.id)
            .where(
                jobs.c.study_uid == study_uid,
                jobs.c.state.in_([JobState.DONE.value, JobState.FAILED.value]),
            )
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def unfinished_jobs(self) -> list[Job]:
        """Jobs that are queued, running or sending."""
        return self.list_jobs(limit=100000, states=UNFINISHED)

    def stale_jobs(self, now: float | None = None) -> list[Job]:
        """Running or sending jobs whose lease expired (nobody works on them)."""
        moment = time.time() if now is None else now
        query = select(jobs).where(
            jobs.c.state.in_([s.value for s in LEASED]), _lease_expired(moment)
        )
        with self.engine.connect() as conn:
            return [Job._from_row(r) for r in conn.execute(query.order_by(jobs.c.id))]

    def take_stale(
        self, job_id: int, *, wait_s: float, now: float | None = None
    ) -> JobState | None:
        """Reclaim a job whose lease expired; the step to queue again, None if not stale.

        A running job goes back to ``queued`` (to be processed again); a sending job stays
        ``sending``, unheld, with ``wait_s`` for the re-queued send to take it. A job whose
        lease was renewed meanwhile is left alone (the check and the change are one update).
        """
        moment = time.time() if now is None else now
        with self.engine.begin() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                return None
            stale = and_(jobs.c.id == job_id, _lease_expired(moment))
            holder = row.lease_owner or "nobody"
            if row.state == JobState.RUNNING.value:
                values: dict[str, Any] = {
                    "state": JobState.QUEUED.value,
                    "lease_owner": "",
                    "lease_expires_at": None,
                    "updated_at": moment,
                }
                outcome = JobState.QUEUED
                message = f"job {job_id}: lease of {holder} expired while running; queued again"
            elif row.state == JobState.SENDING.value:
                values = {"lease_owner": "", "lease_expires_at": moment + wait_s}
                outcome = JobState.SENDING
                message = f"job {job_id}: lease of {holder} expired while sending; send queued"
            else:
                return None
            stale = and_(stale, jobs.c.state == row.state)
            if conn.execute(update(jobs).where(stale).values(**values)).rowcount != 1:
                return None
            self._event(conn, "job.lease_expired", message, job_id)
        return outcome

    # --- deliveries ------------------------------------------------------------------------
    def record_delivery(
        self,
        job_id: int,
        run: int,
        sop_instance_uid: str,
        destination: str,
        status: DeliveryStatus,
        detail: str = "",
    ) -> None:
        """Record what is known of one result object at one destination (replaces)."""
        key = and_(
            deliveries.c.job_id == job_id,
            deliveries.c.run == run,
            deliveries.c.sop_instance_uid == sop_instance_uid,
            deliveries.c.destination == destination,
        )
        values = {"status": status.value, "time": time.time(), "detail": detail}
        with self.engine.begin() as conn:
            if conn.execute(update(deliveries).where(key).values(**values)).rowcount == 0:
                conn.execute(
                    insert(deliveries).values(
                        job_id=job_id,
                        run=run,
                        sop_instance_uid=sop_instance_uid,
                        destination=destination,
                        **values,
                    )
                )

    def delivery_status(
        self, job_id: int, run: int, destination: str
    ) -> dict[str, DeliveryStatus]:
        """SOP Instance UID -> what is known of it at ``destination``, for one run."""
        query = select(deliveries.c.sop_instance_uid, deliveries.c.status).where(
            deliveries.c.job_id == job_id,
            deliveries.c.run == run,
            deliveries.c.destination == destination,
        )
        with self.engine.connect() as conn:
            return {r.sop_instance_uid: DeliveryStatus(r.status) for r in conn.execute(query)}

    def delivery_records(self, job_id: int) -> list[Delivery]:
        """Every delivery record of a job, oldest first."""
        query = select(deliveries).where(deliveries.c.job_id == job_id).order_by(deliveries.c.id)
        with self.engine.connect() as conn:
            return [
                Delivery(
                    job_id=r.job_id,
                    run=r.run,
                    sop_instance_uid=r.sop_instance_uid,
                    destination=r.destination,
                    status=DeliveryStatus(r.status),
                    time=r.time,
                    detail=r.detail,
                )
                for r in conn.execute(query)
            ]

    def mark_for_resend(self, job_id: int, run: int, destination: str | None) -> int:
        """Mark a run's delivered objects to be sent again (to one or every destination)."""
        query = update(deliveries).where(
            deliveries.c.job_id == job_id,
            deliveries.c.run == run,
            deliveries.c.status == DeliveryStatus.SENT.value,
        )
        if destination is not None:
            query = query.where(deliveries.c.destination == destination)
        with self.engine.begin() as conn:
            updated = conn.execute(
                query.values(status=DeliveryStatus.RESEND.value, time=time.time())
            )
        return int(updated.rowcount)

    def mark_purged(self, job_id: int, kind: str, record: Mapping[str, Any]) -> bool:
        """Note in a done job's result that its ``kind`` files (spool, results) were purged.

        The job keeps its row and summary; ``result["purged"][kind]`` gets ``record``. False
        (nothing changed) unless the job is done and unchanged meanwhile: a job an operator
        just queued again is not purged.
        """
        with self.engine.begin() as conn:
            row = conn.execute(
                select(jobs.c.result).where(
                    jobs.c.id == job_id, jobs.c.state == JobState.DONE.value
                )
            ).first()
            if row is None:
                return False
            result = json.loads(row.result)
            result.setdefault("purged", {})[kind] = dict(record)
            updated = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.state == JobState.DONE.value,
                    jobs.c.result == row.result,
                )
                .values(result=json.dumps(result, sort_keys=True, default=str))
            )
        return updated.rowcount == 1

    def counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
            found = {row[0]: int(row[1]) for row in rows}
        return {state.value: found.get(state.value, 0) for state in JobState}

    # --- audit trail -----------------------------------------------------------------------
    def log_event(self, kind: str, message: str, job_id: int | None = None) -> None:
        """Append one line to the audit trail (no patient data in ``message``)."""
        with self.engine.begin() as conn:
            self._event(conn, kind, message, job_id)

    def events(self, *, job_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Audit trail lines, newest first."""
        query = select(events).order_by(events.c.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(events.c.job_id == job_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def iter_events(self, kind_prefix: str) -> Iterator[dict[str, Any]]:
        """Every audit line whose kind starts with ``kind_prefix``, oldest first."""
        query = select(events).where(events.c.kind.startswith(kind_prefix)).order_by(events.c.id)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield dict(row._mapping)

    @staticmethod
    def _event(conn: Any, kind: str, message: str, job_id: int | None) -> None:
        conn.execute(
            insert(events).values(time=time.time(), job_id=job_id, kind=kind, message=message)
        )


# --- read-only queries for the HTTP API, the page and the metrics ----------------------------
def ping(store: JobStore) -> None:
    """Run ``SELECT 1``; raises SQLAlchemy's error when the job store cannot be reached."""
    with store.engine.connect() as conn:
        conn.execute(select(literal(1)))


def job_page(
    store: JobStore,
    *,
    states: Sequence[JobState] | None = None,
    study_uid: str | None = None,
    patient_key: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """One page of jobs, newest first, and how many jobs match in all."""
    conditions = []
    if states:
        conditions.append(jobs.c.state.in_([s.value for s in states]))
    if study_uid:
        conditions.append(jobs.c.study_uid == study_uid)
    if patient_key:
        conditions.append(jobs.c.patient_key == patient_key)
    query = select(jobs).where(*conditions).order_by(jobs.c.id.desc())
    with store.engine.connect() as conn:
        total = int(
            conn.execute(select(func.count()).select_from(jobs).where(*conditions)).scalar_one()
        )
        rows = conn.execute(query.limit(limit).offset(offset))
        return [Job._from_row(r) for r in rows], total


def recent_events(
    store: JobStore, kinds: Sequence[str], *, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest audit lines of these kinds, newest first."""
    query = (
        select(events).where(events.c.kind.in_(list(kinds))).order_by(events.c.id.desc())
    ).limit(limit)
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def count_events(store: JobStore, kind: str, message_like: str | None = None) -> int:
    """How many audit lines of ``kind`` there are (whose message matches the SQL LIKE)."""
    query = select(func.count()).select_from(events).where(events.c.kind == kind)
    if message_like is not None:
        query = query.where(events.c.message.like(message_like))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def destination_events(store: JobStore, needle: str, *, limit: int = 1) -> dict[str, Any]:
    """The newest delivery and the newest delivery failure naming ``needle`` in the audit trail.

    Returns ``{"sent": event or None, "failed": event or None}``.
    """
    found: dict[str, Any] = {}
    pattern = f"%{needle}%"
    with store.engine.connect() as conn:
        for key, kinds in (("sent", ["results.sent"]), ("failed", ["job.sending", "job.failed"])):
            query = (
                select(events)
                .where(events.c.kind.in_(kinds), events.c.message.like(pattern))
                .order_by(events.c.id.desc())
                .limit(limit)
            )
            if key == "failed":
                query = query.where(events.c.message.like("%fail%"))
            row = conn.execute(query).first()
            found[key] = dict(row._mapping) if row is not None else None
    return found


def received_exams(store: JobStore, *, limit: int = 50) -> list[dict[str, Any]]:
    """The studies most recently received: instance and series counts, first and last arrival."""
    query = (
        select(
            instances.c.study_uid,
            func.count().label("n_instances"),
            func.count(func.distinct(instances.c.series_uid)).label("n_series"),
            func.min(instances.c.received_at).label("first_received_at"),
            func.max(instances.c.received_at).label("last_received_at"),
            func.max(instances.c.calling_ae).label("calling_ae"),
        )
        .where(instances.c.own_result.is_(False))
        .group_by(instances.c.study_uid)
        .order_by(func.max(instances.c.received_at).desc())
        .limit(limit)
    )
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def count_instances(store: JobStore) -> int:
    """Instances received from modalities (our own results sent back excluded)."""
    query = select(func.count()).select_from(instances).where(instances.c.own_result.is_(False))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def stage_timings(store: JobStore) -> list[dict[str, float]]:
    """``timings_s`` of every processed job's summary (load, compute, write_results, ...)."""
    query = select(jobs.c.result).where(
        jobs.c.state.in_([JobState.DONE.value, JobState.SENDING.value])
    )
    out = []
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            timings = json.loads(row.result).get("summary", {}).get("timings_s")
            if isinstance(timings, dict):
                out.append({k: float(v) for k, v in timings.items()})
    return out


class InstanceBatcher:
    """Records received instances in the job store from one writer thread, in batches.

    :meth:`submit` only queues the row (microseconds, called from the SCP's threads); the
    writer commits everything queued at most every ``flush_ms`` milliseconds in one
    transaction. The spooled file is already on disk (fsynced) when a row is submitted, so a
    crash loses at most rows, never instances: :meth:`service.server.Service.recover`
    records spooled files that have no row.

    When a commit fails (database down, disk full) the rows are kept and retried every
    ``flush_ms``; until a commit succeeds again :meth:`submit` still queues its row but
    raises, so the storage SCP answers 0xC211 and the sender knows to try again.

    Parameters
    ----------
    store : JobStore
        Where the rows go.
    flush_ms : float
        Longest wait before queued rows are committed (> 0).
    max_batch : int
        Rows per transaction at most (>= 1).

    Raises
    ------
    ValueError
        If ``flush_ms`` or ``max_batch`` is out of range.
    """

    def __init__(self, store: JobStore, *, flush_ms: float = 50.0, max_batch: int = 500) -> None:
        if not flush_ms > 0:
            raise ValueError(f"flush_ms must be > 0, got {flush_ms!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self._store = store
        self._flush_s = flush_ms / 1000.0
        self._max_batch = max_batch
        self._queue: queue.Queue[dict[str, Any] | threading.Event | None] = queue.Queue()
        self._hurry = threading.Event()  # flush() or close() waits: commit now
        self._thread: threading.Thread | None = None
        self._closed = False
        self._unsaved: list[dict[str, Any]] = []  # rows of failed commits, retried first
        self._error = ""  # why the last commit failed; "" when it succeeded
        self.failed_batches = 0
        """Commits that failed (each is logged; their rows are retried)."""

    @property
    def healthy(self) -> bool:
        """``False`` while rows wait for a failed commit to be retried."""
        return not self._error

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="cordt1-instance-writer", daemon=True
            )
            self._thread.start()

    def submit(self, row: Mapping[str, Any]) -> None:
        """Queue one row (keys of :meth:`JobStore.record_instance`, ``info`` as a dict).

        Starts the writer thread if :meth:`start` was not called yet.

        Raises
        ------
        RuntimeError
            If the batcher is closed, or (after queuing the row) while the job store
            refuses commits.
        """
        if self._closed:
            raise RuntimeError("InstanceBatcher is closed")
        if self._thread is None:
            self.start()
        self._queue.put(dict(row))
        error = self._error
        if error:
            raise RuntimeError(f"job store not writable: {error}")

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every row submitted before this call is committed.

        Returns
        -------
        bool
            ``False`` if the writer did not get there within ``timeout_s`` or the commit
            failed (the rows are retried).
        """
        if self._thread is None or not self._thread.is_alive():
            return not self._unsaved
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        return done.wait(timeout_s) and self.healthy

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued (one last try) and stop the writer thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._hurry.set()
            self._thread.join(timeout_s)

    def _run(self) -> None:
        stop = False
        backlog = False  # more than max_batch rows were queued: go on without waiting
        while not stop:
            items: list[dict[str, Any] | threading.Event | None] = []
            if not self._unsaved and not backlog:
                items.append(self._queue.get())  # idle: wait for the first item
            if not backlog and all(isinstance(item, dict) for item in items):
                # Rows arriving meanwhile join this batch: the writer sleeps until the batch
                # is due instead of waking for every row (flush() and close() cut it short).
                self._hurry.wait(self._flush_s)
            self._hurry.clear()
            n_rows = sum(isinstance(item, dict) for item in items)
            while n_rows < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                n_rows += isinstance(item, dict)
            backlog = not self._queue.empty()
            stop = any(item is None for item in items)
            self._commit([item for item in items if isinstance(item, dict)])
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        pending = self._unsaved + rows
        if not pending:
            return
        encoded = [{**row, "info": json.dumps(row["info"], sort_keys=True)} for row in pending]
        try:
            self._store.record_instances(encoded)
        except Exception as exc:
            self.failed_batches += 1
            self._unsaved = pending
            if not self._error:  # log the first failure, not every retry
                LOGGER.exception(
                    "recording %d instance(s) in the job store failed; retrying every %g ms",
                    len(pending),
                    self._flush_s * 1000,
                )
            self._error = f"{type(exc).__name__}: {exc}"[:200]
            return
        if self._error:
            LOGGER.warning("job store writable again: %d row(s) recorded", len(pending))
        self._unsaved = []
        self._error = ""
