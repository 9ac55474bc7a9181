"""What an operator may do to a job: retry, cancel, re-send; each recorded with who and why.

Every state that is not final has a way out: a queued job, a running or sending job whose
lease expired (nobody works on it), and a failed or cancelled job can be retried; any job not
finished can be cancelled. A job a worker holds under a live lease is not retried (that would
run it twice); cancel it first, or wait for the lease to expire.
"""

from __future__ import annotations

import getpass
import time

from dicom_node.scu import Destination
from service.jobs.celery_app import PROCESS_TASK, SEND_TASK
from service.jobs.store import FINAL, Job, JobState, JobStore

__all__ = ["OperatorError", "cancel_job", "lease_text", "operator_name", "resend_job", "retry_job"]


class OperatorError(ValueError):
    """The action is not possible for this job; the message says why and what to do."""


def operator_name() -> str:
    """The local user name, recorded with every operator action."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def lease_text(job: Job, now: float | None = None) -> str:
    """``held by X, 12 s left``, ``STALE lease: expired 40 s ago``, or ``""`` if not leased."""
    if job.state not in (JobState.RUNNING, JobState.SENDING):
        return ""
    moment = time.time() if now is None else now
    if job.lease_stale(moment):
        ago = "" if job.lease_expires_at is None else f" {moment - job.lease_expires_at:.0f} s ago"
        holder = f" (held by {job.lease_owner})" if job.lease_owner else ""
        return f"STALE lease: expired{ago}{holder}"
    left = (job.lease_expires_at or moment) - moment
    if not job.lease_owner:
        return f"waiting for the next send attempt ({left:.0f} s)"
    return f"held by {job.lease_owner}, {left:.0f} s left"


def _get(store: JobStore, job_id: int) -> Job:
    try:
        return store.get_job(job_id)
    except KeyError as exc:
        raise OperatorError(f"no job {job_id}") from exc


def _refuse_live(job: Job, action: str, now: float) -> None:
    held = job.state in (JobState.RUNNING, JobState.SENDING) and not job.lease_stale(now)
    if held and job.lease_owner:
        raise OperatorError(
            f"job {job.id} is {job.state.value} and {lease_text(job, now)}; it is not "
            f"{action} while a worker holds it (cancel it, or wait for the lease to expire)"
        )


def retry_job(
    store: JobStore,
    job_id: int,
    *,
    operator: str,
    reason: str,
    reprocess: bool = False,
    destinations: list[str] | None = None,
    now: float | None = None,
) -> str:
    """Queue a job again; the Celery task to send (process, or send its results).

    A job that has results (it failed or was cancelled while sending, or waits to be sent)
    resumes sending: only objects a destination has not confirmed go out. Otherwise, or with
    ``reprocess``, the exam is processed again into a new run folder.

    Raises
    ------
    OperatorError
        For a job that is done, unknown, or held by a worker under a live lease.
    """
    moment = time.time() if now is None else now
    job = _get(store, job_id)
    if job.state is JobState.DONE:
        raise OperatorError(
            f"job {job_id} is done; `cordt1 resend {job_id}` sends its results again"
        )
    _refuse_live(job, "retried", moment)
    note = f"retry by {operator}: {reason}"
    store.log_event("operator.retry", f"job {job_id} ({job.state.value}) {note}", job_id)
    if job.result.get("dicom") and not reprocess:
        result = dict(job.result)
        result["send_attempts"] = 0
        if destinations:
            result["destinations"] = list(destinations)
        store.resume_sending(job_id, result, note=f"sending resumed ({note})")
        return SEND_TASK
    store.requeue(job_id, note=f"queued again ({note})")
    return PROCESS_TASK


def cancel_job(store: JobStore, job_id: int, *, operator: str, reason: str) -> None:
    """End a job that is not finished as ``cancelled`` with who and why.

    A worker still on it loses its lease: it publishes and sends nothing more.

    Raises
    ------
    OperatorError
        For an unknown job or one already finished.
    """
    job = _get(store, job_id)
    if job.state in FINAL or not store.cancel(job_id, operator=operator, reason=reason):
        state = store.get_job(job_id).state.value
        raise OperatorError(f"job {job_id} is {state}; only unfinished jobs can be cancelled")


def resend_job(
    store: JobStore,
    job_id: int,
    *,
    operator: str,
    reason: str,
    destination: str | None = None,
    default_destinations: list[str] | None = None,
    now: float | None = None,
) -> str:
    """Send a job's results again (every object), to one destination or all; the task.

    Raises
    ------
    OperatorError
        For a job without results, held by a worker, or a destination that cannot be parsed.
    """
    moment = time.time() if now is None else now
    job = _get(store, job_id)
    if not job.result.get("dicom"):
        raise OperatorError(f"job {job_id} has no results to send ({job.state.value})")
    if "results" in job.result.get("purged", {}):
        raise OperatorError(
            f"job {job_id}: its results were purged (retention); nothing left to send"
        )
    _refuse_live(job, "re-sent", moment)
    if destination is not None:
        try:
            Destination.parse(destination)
        except ValueError as exc:
            raise OperatorError(str(exc)) from exc
        targets = [destination]
    else:
        targets = list(job.result.get("destinations") or default_destinations or [])
    if not targets:
        raise OperatorError(f"job {job_id}: no destination configured; give --destination")
    run = int(job.result.get("run", job.attempts))
    marked = sum(store.mark_for_resend(job_id, run, text) for text in targets)
    result = dict(job.result)
    result["send_attempts"] = 0
    result["destinations"] = targets
    note = (
        f"re-send to {', '.join(targets)} by {operator}: {reason} "
        f"({marked} confirmed object(s) marked to go again)"
    )
    store.log_event("operator.resend", f"job {job_id} {note}", job_id)
    store.resume_sending(job_id, result, note=note)
    return SEND_TASK
