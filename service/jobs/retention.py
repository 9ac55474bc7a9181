"""Retention: purge old spool, results, quarantine and queue files, never work in progress.

An exam's files are purged only when its job is *done* and every result object is confirmed
by every destination (the delivery rows of :mod:`service.jobs.delivery`), and when no instance
of its study arrived recently or after its newest job was made (it may still be arriving).
Spool files of a series that a job still needs (queued, running, sending, failed or not
delivered) are never touched. Two triggers (settings ``[retention]``):

- age: the spool (``spool_days``) or the results folder (``results_days``) of a job that
  finished that long ago; quarantined input (``quarantine_days``) and leftover messages of
  the embedded queue whose job is finished (``broker_days``) by their file age;
- disk pressure: while the data_dir file system has less than ``min_free_mb`` free, the spool
  and results of the oldest purgeable exams, whatever their age.

A purged job keeps its row and summary; ``result["purged"]`` records what went, when and why.
Every purge is in the audit trail (``retention.purged`` per job, ``retention.run`` per purge,
no patient data), which is where the metrics and the page read the totals from.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.jobs.store import DeliveryStatus, Job, JobState, JobStore, received_exams
from service.settings import Settings

__all__ = [
    "ExamPurge",
    "PurgeReport",
    "PurgeTotals",
    "delivered",
    "disk_free_bytes",
    "purge",
    "purge_totals",
]

log = logging.getLogger(__name__)

DAY_S = 86400.0
MIB = 1024 * 1024
RUN_EVENT = "retention.run"
JOB_EVENT = "retention.purged"
_RUN_PATTERN = re.compile(r"purged (\d+) exam\(s\), (\d+) bytes")


def disk_free_bytes(path: Path) -> int:
    """Free bytes of the file system holding ``path``."""
    return shutil.disk_usage(path).free


@dataclass
class ExamPurge:
    """What one purge deletes of one job's exam."""

    job_id: int
    reason: str
    spool_files: list[Path] = field(default_factory=list)
    results_dir: Path | None = None
    spool_bytes: int = 0
    results_bytes: int = 0

    @property
    def bytes(self) -> int:
        """Bytes of the spool files and the results folder together."""
        return self.spool_bytes + self.results_bytes

    def describe(self) -> str:
        """One line without patient data: job id, what, how many bytes, why."""
        parts = []
        if self.spool_files:
            parts.append(f"spool ({len(self.spool_files)} file(s), {self.spool_bytes} bytes)")
        if self.results_dir is not None:
            parts.append(f"results ({self.results_bytes} bytes)")
        return f"job {self.job_id}: {' and '.join(parts)}: {self.reason}"


@dataclass
class PurgeReport:
    """What a purge deleted (or, dry, would delete)."""

    dry_run: bool
    exams: list[ExamPurge] = field(default_factory=list)
    quarantine_files: int = 0
    quarantine_bytes: int = 0
    broker_files: int = 0
    broker_bytes: int = 0
    own_result_files: int = 0
    own_result_bytes: int = 0
    kept_jobs: int = 0
    free_bytes_before: int | None = None

    @property
    def bytes(self) -> int:
        """Every byte freed."""
        return (
            sum(e.bytes for e in self.exams)
            + self.quarantine_bytes
            + self.broker_bytes
            + self.own_result_bytes
        )

    def summary(self) -> str:
        """The ``retention.run`` audit line (its head is parsed by :func:`purge_totals`)."""
        return (
            f"purged {len(self.exams)} exam(s), {self.bytes} bytes: "
            f"quarantine {self.quarantine_files} file(s), queue {self.broker_files} file(s), "
            f"own results sent back {self.own_result_files} file(s); "
            f"{self.kept_jobs} job(s) kept (not done, or not delivered everywhere)"
        )

    def lines(self) -> list[str]:
        """Human-readable lines for `cordt1 purge`."""
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"{verb}: {e.describe()}" for e in self.exams]
        if self.quarantine_files:
            out.append(
                f"{verb}: quarantine ({self.quarantine_files} file(s), "
                f"{self.quarantine_bytes} bytes)"
            )
        if self.broker_files:
            out.append(f"{verb}: queue ({self.broker_files} file(s), {self.broker_bytes} bytes)")
        if self.own_result_files:
            out.append(
                f"{verb}: own results sent back to us ({self.own_result_files} file(s), "
                f"{self.own_result_bytes} bytes)"
            )
        head = "dry run, nothing deleted: " if self.dry_run else ""
        out.append(head + self.summary())
        return out


@dataclass(frozen=True)
class PurgeTotals:
    """Totals over every purge in the audit trail."""

    exams: int
    bytes: int
    last_at: float | None
    last_bytes: int | None


def delivered(store: JobStore, job: Job) -> bool:
    """Whether every result object of the job's run is confirmed by every destination."""
    destinations = list(job.result.get("destinations") or [])
    objects = list(job.result.get("dicom") or [])
    if not destinations or not objects:
        return True
    run = int(job.result.get("run", job.attempts))
    sent: dict[str, set[str]] = {d: set() for d in destinations}
    for record in store.delivery_records(job.id):
        if (
            record.run == run
            and record.destination in sent
            and record.status is DeliveryStatus.SENT
        ):
            sent[record.destination].add(record.sop_instance_uid)
    return all(len(uids) >= len(objects) for uids in sent.values())


def _size(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total


def _tree_size(folder: Path) -> int:
    return _size(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _old_files(folder: Path, max_age_s: float, now: float) -> list[Path]:
    if not folder.is_dir():
        return []
    out = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and now - path.stat().st_mtime >= max_age_s:
                out.append(path)
        except OSError:
            continue
    return out


def _message_job(path: Path) -> int | None:
    """The job id a queue message carries (``None`` when unreadable)."""
    try:
        headers = json.loads(path.read_text())["headers"]
        args = json.loads(headers["argsrepr"])
        return int(args[0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _remove_empty_parents(path: Path, stop_at: Path) -> None:
    folder = path.parent
    while folder != stop_at and stop_at in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


class _Planner:
    """Works out which exams may go (see the module docstring)."""

    def __init__(self, settings: Settings, store: JobStore, now: float) -> None:
        self.settings = settings
        self.store = store
        self.now = now
        self.jobs = store.list_jobs(limit=10**9)
        self.purgeable: list[Job] = []
        protected_series: set[str] = set()
        newest_job: dict[str, float] = {}
        for job in self.jobs:
            newest_job[job.study_uid] = max(newest_job.get(job.study_uid, 0.0), job.created_at)
            done_with = set(job.result.get("purged", {}))
            if job.state is JobState.DONE and (
                {"spool", "results"} <= done_with or delivered(store, job)
            ):
                self.purgeable.append(job)
            else:
                protected_series.update(job.series_uids)
        self.kept = len(self.jobs) - len(self.purgeable)
        self.protected_series = protected_series
        self.claimed: set[Path] = set()  # spool files already in a plan (shared series)
        keep_s = settings.retention.keep_received_s
        self.arriving = {
            row["study_uid"]
            for row in received_exams(store, limit=10**9)
            if row["last_received_at"] > newest_job.get(row["study_uid"], float("inf"))
            or self.now - row["last_received_at"] < keep_s
        }
        self.purgeable = [j for j in self.purgeable if j.study_uid not in self.arriving]
        self.purgeable.sort(key=lambda j: j.finished_at or j.updated_at)

    def spool_files(self, job: Job) -> list[Path]:
        if "spool" in job.result.get("purged", {}):
            return []
        series = [s for s in job.series_uids if s not in self.protected_series]
        paths = self.store.instance_paths(series)
        found = [Path(p) for files in paths.values() for p in files]
        mine = [p for p in found if p not in self.claimed and p.is_file()]
        self.claimed.update(mine)
        return mine

    def results_dir(self, job: Job) -> Path | None:
        if "results" in job.result.get("purged", {}):
            return None
        folder = self.settings.results_dir / f"job-{job.id:06d}"
        return folder if folder.is_dir() else None

    def age_s(self, job: Job) -> float:
        return self.now - (job.finished_at or job.updated_at)


def _plan_exams(planner: _Planner, free_bytes: int | None, settings: Settings) -> list[ExamPurge]:
    retention = settings.retention
    plans: dict[int, ExamPurge] = {}
    for job in planner.purgeable:
        age_s = planner.age_s(job)
        days = age_s / DAY_S
        plan = ExamPurge(job_id=job.id, reason="")
        reasons = []
        if retention.spool_days is not None and age_s >= retention.spool_days * DAY_S:
            plan.spool_files = planner.spool_files(job)
            if plan.spool_files:
                reasons.append(f"spool older than {retention.spool_days:g} days")
        if retention.results_days is not None and age_s >= retention.results_days * DAY_S:
            plan.results_dir = planner.results_dir(job)
            if plan.results_dir is not None:
                reasons.append(f"results older than {retention.results_days:g} days")
        if reasons:
            plan.reason = f"finished {days:.1f} days ago, " + ", ".join(reasons)
            plans[job.id] = plan
    if retention.min_free_mb is not None and free_bytes is not None:
        target = retention.min_free_mb * MIB
        free = free_bytes + sum(_plan_size(p) for p in plans.values())
        for job in planner.purgeable:  # oldest first
            if free >= target:
                break
            plan = plans.get(job.id) or ExamPurge(job_id=job.id, reason="")
            before = _plan_size(plan)
            plan.spool_files = plan.spool_files or planner.spool_files(job)
            plan.results_dir = plan.results_dir or planner.results_dir(job)
            gained = _plan_size(plan) - before
            if gained <= 0:
                continue
            pressure = (
                f"disk pressure ({free // MIB} MiB free, target {retention.min_free_mb} MiB)"
            )
            plan.reason = f"{plan.reason}; {pressure}" if plan.reason else pressure
            plans[job.id] = plan
            free += gained
    return list(plans.values())


def _plan_size(plan: ExamPurge) -> int:
    plan.spool_bytes = _size(plan.spool_files)
    plan.results_bytes = _tree_size(plan.results_dir) if plan.results_dir is not None else 0
    return plan.bytes


def _purge_exam(store: JobStore, settings: Settings, plan: ExamPurge, now: float) -> bool:
    """Delete one exam's planned files after marking the job; False if the job changed."""
    for kind, present, size in (
        ("spool", bool(plan.spool_files), plan.spool_bytes),
        ("results", plan.results_dir is not None, plan.results_bytes),
    ):
        if present and not store.mark_purged(
            plan.job_id, kind, {"time": now, "bytes": size, "reason": plan.reason}
        ):
            log.info("job %d changed while purging; left alone", plan.job_id)
            return False
    for path in plan.spool_files:
        path.unlink(missing_ok=True)
        _remove_empty_parents(path, settings.spool_dir)
    if plan.results_dir is not None:
        shutil.rmtree(plan.results_dir, ignore_errors=True)
    store.log_event(JOB_EVENT, plan.describe(), plan.job_id)
    return True


def _purge_own_results(store: JobStore, report: PurgeReport, received_before: float) -> None:
    """Our own results a PACS sent back to us, older than the spool's age limit."""
    old = store.own_result_instances(received_before)
    present = [path for _, text in old if (path := Path(text)).is_file()]
    report.own_result_files = len(present)
    report.own_result_bytes = _size(present)
    if report.dry_run:
        return
    for path in present:
        path.unlink(missing_ok=True)
    store.forget_instances([uid for uid, _ in old])


def purge(
    settings: Settings,
    store: JobStore,
    *,
    dry_run: bool = False,
    now: float | None = None,
    free_bytes: Callable[[Path], int] = disk_free_bytes,
) -> PurgeReport:
    """Purge what the retention settings allow; never work in progress or undelivered results.

    Parameters
    ----------
    settings : Settings
        ``retention``, ``data_dir`` (spool, results, quarantine, broker folders).
    store : JobStore
    dry_run : bool
        Work out and report what would go, delete nothing, record nothing.
    now : float, optional
        The moment ages are counted from (default: now).
    free_bytes : callable
        Free bytes of a path's file system (injected by tests to simulate disk pressure).

    Returns
    -------
    PurgeReport
    """
    moment = time.time() if now is None else now
    retention = settings.retention
    report = PurgeReport(dry_run=dry_run)
    try:
        report.free_bytes_before = free_bytes(settings.data_dir)
    except OSError as exc:
        log.warning("free space of %s unknown: %s", settings.data_dir, exc)
    planner = _Planner(settings, store, moment)
    report.kept_jobs = planner.kept
    for plan in _plan_exams(planner, report.free_bytes_before, settings):
        _plan_size(plan)
        if dry_run or _purge_exam(store, settings, plan, moment):
            report.exams.append(plan)
    if retention.quarantine_days is not None:
        old = _old_files(
            settings.data_dir / "quarantine", retention.quarantine_days * DAY_S, moment
        )
        report.quarantine_files, report.quarantine_bytes = len(old), _size(old)
        if not dry_run:
            for path in old:
                path.unlink(missing_ok=True)
    if retention.broker_days is not None:
        finished = {j.id for j in planner.jobs if j.state in (JobState.DONE, JobState.FAILED)}
        finished |= {j.id for j in planner.jobs if j.state is JobState.CANCELLED}
        known = {j.id for j in planner.jobs}
        broker = settings.data_dir / "broker"
        old = _old_files(broker / "processed", retention.broker_days * DAY_S, moment)
        for path in _old_files(broker / "queue", retention.broker_days * DAY_S, moment):
            job_id = _message_job(path)
            if job_id is not None and (job_id in finished or job_id not in known):
                old.append(path)
        report.broker_files, report.broker_bytes = len(old), _size(old)
        if not dry_run:
            for path in old:
                path.unlink(missing_ok=True)
    if retention.spool_days is not None:
        _purge_own_results(store, report, moment - retention.spool_days * DAY_S)
    if not dry_run:
        store.log_event(RUN_EVENT, report.summary())
        log.info("retention: %s", report.summary())
    return report


def purge_totals(store: JobStore) -> PurgeTotals:
    """Exams and bytes purged over every recorded purge, and the last purge's time and bytes."""
    exams = total = 0
    last_at: float | None = None
    last_bytes: int | None = None
    for event in store.iter_events(RUN_EVENT):
        found = _RUN_PATTERN.match(event["message"])
        if found is None:
            continue
        exams += int(found.group(1))
        total += int(found.group(2))
        last_at, last_bytes = float(event["time"]), int(found.group(2))
    return PurgeTotals(exams=exams, bytes=total, last_at=last_at, last_bytes=last_bytes)
