"""`cordt1 serve`: the receiver, the completion watcher, the dispatcher and local workers.

The SCP's handler only spools and records; a watcher thread asks the exam tracker every
``TICK_S`` which exams are ready, records a job for each and hands its id to Celery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from dicom_node.completion import ExamReady, ExamTracker
from dicom_node.components import Component
from dicom_node.instance import InstanceInfo, PseudonymKey, read_instance_info
from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP, StoreRefusal
from dicom_node.spool import Spool
from dicom_node.status import describe
from service.api.controls import Controls
from service.inputs.exam import own_markers
from service.jobs.celery_app import PROCESS_TASK, SEND_TASK, broker_run_id, create_app
from service.jobs.corrections import rerun_if_changed
from service.jobs.priors import fetch_prior
from service.jobs.retention import purge
from service.jobs.store import InstanceBatcher, JobState, JobStore
from service.jobs.tasks import STORE_UNREACHABLE
from service.pseudonym import pseudonym_key
from service.settings import Settings

if TYPE_CHECKING:
    from service.api.server import ApiServer

__all__ = [
    "Service",
    "info_from_dict",
    "info_to_dict",
    "instance_row",
    "own_markers",
    "record_association",
    "record_instance",
    "record_refusal",
    "record_unrecorded_files",
]

log = logging.getLogger(__name__)

TICK_S = 0.5
#: The first purge runs this long after the start (or after retention.interval_min if shorter).
FIRST_PURGE_S = 60.0

#: How a failed watcher step says the job store did not answer.
STORE_UNREACHABLE_TEXT = "job store unreachable"


def info_to_dict(info: InstanceInfo) -> dict[str, Any]:
    """A JSON-ready copy of an InstanceInfo."""
    # shallow: every field is a scalar, a string, a Path or an enum (asdict deep-copies)
    data = {field.name: getattr(info, field.name) for field in dataclasses.fields(info)}
    data["path"] = str(info.path)
    data["component"] = str(info.component)
    return data


def info_from_dict(data: dict[str, Any]) -> InstanceInfo:
    """Inverse of :func:`info_to_dict`."""
    values = dict(data)
    values["path"] = Path(values["path"])
    values["component"] = Component(values["component"])
    return InstanceInfo(**values)


@dataclasses.dataclass
class _HeldExam:
    """An exam waiting for its prior (see :meth:`Service.dispatch_ready`)."""

    exam: ExamReady
    since: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    prior_uid: str | None = None


def instance_row(info: InstanceInfo) -> dict[str, Any]:
    """The job-store row of one spooled instance (``info`` as a dict, not yet JSON)."""
    return {
        "sop_instance_uid": info.sop_instance_uid,
        "study_uid": info.study_uid,
        "series_uid": info.series_uid,
        "component": str(info.component),
        "path": str(info.path),
        "calling_ae": info.calling_ae,
        "received_at": info.received_at,
        "own_result": info.is_own_result,
        "info": info_to_dict(info),
        "patient_key": info.patient_key,
    }


def record_instance(store: JobStore, info: InstanceInfo) -> None:
    """Keep one spooled instance in the job store (the tracker is rebuilt from these)."""
    store.record_instance(**instance_row(info))


def record_unrecorded_files(store: JobStore, spool: Spool, pseudonyms: PseudonymKey) -> int:
    """Record spooled files that have no job-store row (a crash before the batch commit).

    Instances are acknowledged once their file is fsynced; their rows are committed in
    batches a few milliseconds later (:class:`service.jobs.store.InstanceBatcher`). A crash in
    between leaves files without rows: this reads their headers (never pixel data) and
    records them. Files whose header cannot be read are left alone and counted as skipped
    in the log.

    Returns
    -------
    int
        Number of instances recorded.
    """
    recorded = store.recorded_paths()
    rows: list[dict[str, Any]] = []
    skipped = 0
    for path in spool.iter_files():
        if str(path) in recorded:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            stat = path.stat()
            info = read_instance_info(
                ds,
                path=path,
                calling_ae="",
                received_at=stat.st_mtime,
                own_markers=own_markers(),
                pseudonyms=pseudonyms,
                size_bytes=stat.st_size,
            )
        except Exception as exc:
            skipped += 1
            log.warning("spooled file %s not recorded: %s", path.name, type(exc).__name__)
            continue
        if info.path != path:
            skipped += 1
            log.warning("spooled file %s is not where its UIDs put it", path.name)
            continue
        rows.append({**instance_row(info), "info": json.dumps(info_to_dict(info), sort_keys=True)})
    store.record_instances(rows)
    if rows or skipped:
        log.warning(
            "recorded %d spooled instance(s) that had no job-store row (%d skipped)",
            len(rows),
            skipped,
        )
    return len(rows)


def record_association(store: JobStore, record: AssociationRecord) -> None:
    """Keep one association (accepted or rejected, and why) in the audit trail."""
    if record.accepted:
        outcome = f"accepted, ended: {record.reason}"
    else:
        outcome = f"rejected ({record.reason})"
    transport = f", TLS ({record.tls})" if record.tls else ""
    store.log_event(
        "association",
        f"{record.calling_ae}@{record.address} {outcome}, "
        f"{record.instances} instance(s) stored, {record.failures} refused, "
        f"{record.bytes} bytes{transport}",
    )


def record_refusal(store: JobStore, refusal: StoreRefusal) -> None:
    """Keep one refused C-STORE (status, reason, quarantine file) in the audit trail."""
    kept = f"; quarantined as {refusal.quarantined}" if refusal.quarantined else ""
    store.log_event(
        "store.refused",
        f"{refusal.calling_ae}@{refusal.address} SOP instance "
        f"{refusal.sop_instance_uid or '(none)'}: {describe(refusal.status)}: "
        f"{refusal.reason}{kept}",
    )


def _series_name(info: InstanceInfo) -> str:
    """A series as events name it: number and description (never patient data)."""
    number = info.series_number if info.series_number is not None else "(no number)"
    description = f" ({info.series_description!r})" if info.series_description else ""
    return f"series {number}{description}"


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to a worker's whole process group (the worker and its pool)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM when `serve` dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Service:
    """Everything `cordt1 serve` runs in its own process.

    Parameters
    ----------
    settings : Settings

    Raises
    ------
    ValueError
        When a TLS certificate, key or CA file of ``node.tls`` or ``send.tls`` is missing,
        unreadable or invalid (the message names the setting and the file).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        node = settings.node
        server_tls = node.tls.server_tls() if node.tls is not None else None
        settings.send.client_tls()  # the workers' sending TLS files: fail now, not per job
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.job_store_url)
        self.batcher = InstanceBatcher(self.store, flush_ms=node.record_flush_ms)
        self.spool = Spool(settings.spool_dir, settings.data_dir / "quarantine")
        self.pseudonyms = pseudonym_key(settings)
        self.tracker = ExamTracker(settle_s=settings.node.settle_s, stale_s=settings.node.stale_s)
        self.celery = create_app(settings)
        self.controls = Controls(settings.data_dir / "run" / "pause.json")
        self.api: ApiServer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._purger: threading.Thread | None = None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._held: dict[str, _HeldExam] = {}
        #: Exams with instances received again, until their job is finished and compared.
        self._resent: dict[str, tuple[int, ExamReady]] = {}
        self._fetched_priors: set[str] = set()
        self._broker_error = ""  # why the last message could not be sent; "" when it could
        self._broker_run_id: str | None = None
        self.scp = StorageSCP(
            ScpConfig(
                ae_title=node.ae_title,
                host=node.host,
                port=node.port if node.listen_plain else None,
                tls=server_tls,
                tls_port=node.tls.port if node.tls is not None else None,
                allowed_calling_aes={
                    ae: host or None for ae, host in node.allowed_calling_aes.items()
                },
                max_associations=node.max_associations,
                max_associations_per_ae=node.max_associations_per_ae,
                min_free_bytes=node.min_free_mb * 1024 * 1024,
                max_pixel_bytes=node.max_pixel_mb * 1024 * 1024,
                network_timeout_s=node.idle_timeout_s,
                acceptor_processes=node.acceptor_processes,
                direct_pdata=node.direct_pdata,
            ),
            self.spool,
            on_instance=self.on_instance,
            on_association=self.on_association,
            own_markers=own_markers(),
            pseudonyms=self.pseudonyms,
            on_refusal=self.on_refusal,
            paused=lambda: self.controls.is_paused("intake"),
        )

    # --- event handlers (called from the SCP's threads; keep them short) ---------------------
    def on_instance(self, info: InstanceInfo) -> None:
        """Queue the job-store row of a spooled instance and feed the exam tracker."""
        self.batcher.submit(instance_row(info))
        if info.is_own_result:
            return
        with self._lock:
            now = time.time()
            if not self.tracker.add(info, now):
                self.tracker.resent(info, now)  # a corrected copy or an identical re-send

    def on_association(self, record: AssociationRecord) -> None:
        """Keep every association in the audit trail."""
        record_association(self.store, record)

    def on_refusal(self, refusal: StoreRefusal) -> None:
        """Keep every refused C-STORE (and why) in the audit trail."""
        record_refusal(self.store, refusal)

    # --- the watcher -------------------------------------------------------------------------
    def dispatch_ready(self, now: float | None = None) -> list[int]:
        """Record and enqueue a job for every exam the tracker declares ready.

        While processing is paused nothing is dispatched: ready exams wait in the tracker.
        With ``priors.source`` set, a new exam of a patient who has no other exam in our
        store is held while its prior is fetched from the PACS (see :mod:`service.jobs.priors`)
        and until the prior's own job has finished (or ``priors.wait_s`` has passed), so
        the follow-up comparison finds it.
        """
        if self.controls.is_paused("processing"):
            return []
        now = time.time() if now is None else now
        with self._lock:
            ready: list[ExamReady] = self.tracker.ready(now)
        job_ids: list[int] = []
        if ready and not self.batcher.flush():
            log.warning("job-store rows of received instances are late; dispatching anyway")
        for exam in ready:
            if self._hold_for_prior(exam, now):
                continue
            job_id = self._dispatch(exam)
            if job_id is not None:
                job_ids.append(job_id)
        for study_uid, held in list(self._held.items()):
            if self._prior_settled(held, now):
                del self._held[study_uid]
                job_id = self._dispatch(held.exam)
                if job_id is not None:
                    job_ids.append(job_id)
        job_ids.extend(self._rerun_corrected())
        return job_ids

    def _dispatch(self, exam: ExamReady) -> int | None:
        first = next(iter(exam.series.values()))[0]
        n_instances = sum(len(infos) for infos in exam.series.values())
        if self.store.has_job(exam.study_uid, list(exam.series), n_instances):
            job_id = self._job_of(exam) if exam.resent else None
            if job_id is not None:
                self._resent[exam.study_uid] = (job_id, exam)
            return None
        job_id = self.store.create_job(
            study_uid=exam.study_uid,
            patient_key=first.patient_key,
            series_uids=list(exam.series),
            n_instances=n_instances,
            complete=exam.complete,
            reason=exam.reason,
        )
        if self._enqueue(PROCESS_TASK, job_id):
            log.info("job %d queued for study %s", job_id, exam.study_uid)
        return job_id

    def _rerun_corrected(self) -> list[int]:
        """Queue a new run of each finished job whose instances came again with new content.

        An exam whose instances were received again (same SOP Instance UIDs, same count) waits
        here until its job is finished; then the spooled files are compared with what the
        job's last run read (:mod:`service.jobs.corrections`). Identical re-sends start
        nothing.
        """
        queued: list[int] = []
        for study_uid, (job_id, exam) in list(self._resent.items()):
            try:
                job = self.store.get_job(job_id)
            except KeyError:  # removed meanwhile (retention): nothing to run again
                del self._resent[study_uid]
                continue
            if job.state in (JobState.QUEUED, JobState.RUNNING, JobState.SENDING):
                continue  # decided once the job is finished
            del self._resent[study_uid]
            names = {uid: _series_name(infos[0]) for uid, infos in exam.series.items() if infos}
            if rerun_if_changed(self.store, job, series_names=names):
                self._enqueue(PROCESS_TASK, job.id)  # queued in the store whatever happens
                queued.append(job.id)
        return queued

    def _job_of(self, exam: ExamReady) -> int | None:
        """The latest job of exactly this exam's series, if any."""
        series = sorted(exam.series)
        ids = [
            job.id
            for job in self.store.list_jobs(limit=100000)
            if job.study_uid == exam.study_uid and sorted(job.series_uids) == series
        ]
        return max(ids) if ids else None

    # --- the broker --------------------------------------------------------------------------
    def _enqueue(self, task: str, job_id: int) -> bool:
        """Send one job's message; False (logged once per outage) when the broker is away.

        The job stays in the job store whatever happens: :meth:`check_broker` sends the
        messages of every queued job again once the broker answers.
        """
        try:
            self.celery.send_task(task, args=[job_id])
        except Exception as exc:
            self._broker_unreachable(exc)
            return False
        return True

    def _broker_unreachable(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"[:300]
        if not self._broker_error:
            message = (
                f"broker unreachable ({error}); received exams wait as queued jobs and "
                "are sent to the workers when it answers again"
            )
            log.error("%s", message)
            with contextlib.suppress(Exception):
                self.store.log_event("broker.unreachable", message)
        self._broker_error = error

    def check_broker(self) -> int:
        """Notice a broker that came back or restarted; queued jobs' messages sent again.

        A Redis without persistence forgets its messages when it restarts (a new run id), and
        messages for jobs dispatched while it was away were never sent: either way every
        queued job gets a new message (a duplicate is dropped when the job is taken). Jobs
        being processed or sent come back through their leases (:meth:`reconcile`).

        Returns
        -------
        int
            Messages sent again (0 when nothing was wrong, or the broker is still away).
        """
        try:
            run_id = broker_run_id(self.settings.celery_broker_url)
        except Exception as exc:
            self._broker_unreachable(exc)
            return 0
        restarted = None not in (run_id, self._broker_run_id) and run_id != self._broker_run_id
        if run_id is not None:
            self._broker_run_id = run_id
        if not (restarted or self._broker_error):
            return 0
        return self.resend_queued("broker restarted" if restarted else "broker reachable again")

    def resend_queued(self, why: str) -> int:
        """Send every queued job's message again (a duplicate is dropped when it is taken).

        For when messages may have been lost or never sent: the broker restarted or came
        back, or the job store came back (a database that lost its last commits in a crash
        may have undone a worker's claim). Returns the number sent; 0 if the broker is away.
        """
        queued = self.store.list_jobs(limit=100000, states=[JobState.QUEUED])
        try:
            for job in queued:
                self.celery.send_task(PROCESS_TASK, args=[job.id])
        except Exception as exc:
            self._broker_unreachable(exc)
            return 0
        message = f"{why}: {len(queued)} queued job(s) sent to the workers again"
        log.warning("%s", message)
        self.store.log_event("broker.restored" if "broker" in why else "store.restored", message)
        self._broker_error = ""
        return len(queued)

    # --- priors from the PACS ----------------------------------------------------------------
    def _hold_for_prior(self, exam: ExamReady, now: float) -> bool:
        """Start fetching the exam's prior and hold the exam, when that is called for."""
        if self.settings.priors.source is None or exam.update or exam.study_uid in self._held:
            return False
        with self._lock:
            if exam.study_uid in self._fetched_priors:
                return False  # a fetched prior: its own prior is not fetched
        first = next(iter(exam.series.values()))[0]
        have = self.store.patient_study_uids(first.patient_key)
        if have - {exam.study_uid}:
            return False  # another exam of this patient is here: the comparison uses ours
        held = _HeldExam(exam=exam, since=now)
        self._held[exam.study_uid] = held
        threading.Thread(
            target=self._fetch_prior,
            args=(held, first.path, have),
            name="cordt1-prior-fetch",
            daemon=True,
        ).start()
        return True

    def _fetch_prior(self, held: _HeldExam, path: Path, have: set[str]) -> None:
        study_uid = held.exam.study_uid
        try:
            header = dcmread(path, stop_before_pixels=True)
            fetched = fetch_prior(
                self.settings,
                patient_id=str(header.get("PatientID") or ""),
                issuer_of_patient_id=str(header.get("IssuerOfPatientID") or ""),
                current_study_uid=study_uid,
                moment=(str(header.get("StudyDate") or ""), str(header.get("StudyTime") or "")),
                have_study_uids=have,
            )
            if fetched is None:
                self.store.log_event("prior.none", f"study {study_uid}: no prior on the PACS")
            else:
                with self._lock:
                    self._fetched_priors.add(fetched.study_uid)
                held.prior_uid = fetched.study_uid
                self.store.log_event(
                    "prior.fetched",
                    f"study {study_uid}: prior {fetched.study_uid} of {fetched.study_date} "
                    f"fetched from {self.settings.priors.source} "
                    f"({fetched.instances} instance(s))",
                )
        except Exception as exc:
            log.warning("fetching the prior of study %s failed: %s", study_uid, exc)
            self.store.log_event(
                "prior.failed", f"study {study_uid}: fetching its prior failed: {exc}"
            )
        finally:
            held.done.set()

    def _prior_settled(self, held: _HeldExam, now: float) -> bool:
        """Whether a held exam may go: prior fetched and processed, none, failed, or too late."""
        if now - held.since > self.settings.priors.wait_s:
            self.store.log_event(
                "prior.late",
                f"study {held.exam.study_uid}: processed without its prior after "
                f"{self.settings.priors.wait_s:g} s",
            )
            return True
        if not held.done.is_set():
            return False
        if held.prior_uid is None:
            return True
        return self.store.study_finished(held.prior_uid)

    def recover(self) -> None:
        """After a start: rebuild the tracker from the store and queue what nobody works on.

        Queued jobs are queued again (a message may have been lost with the broker); running
        or sending jobs whose lease expired are taken back (:meth:`reconcile`); jobs a live
        worker holds are left alone. Exams that already have a job are not dispatched again
        (see :meth:`dispatch_ready`), but a job whose instances were received again after its
        last run started is compared with them once it is finished (a correction that arrived
        just before a restart is not lost).
        """
        record_unrecorded_files(self.store, self.spool, self.pseudonyms)
        replay = [info_from_dict(d) for d in self.store.instance_infos()]
        with self._lock:
            for info in replay:
                if info.path.exists():
                    self.tracker.add(info, info.received_at)
        self._resent.update(self._received_after_runs(replay))
        with contextlib.suppress(Exception):  # unreachable: logged by the first send
            self._broker_run_id = broker_run_id(self.settings.celery_broker_url)
        for job in self.store.list_jobs(limit=100000, states=[JobState.QUEUED]):
            if self._enqueue(PROCESS_TASK, job.id):
                message = f"job {job.id} re-queued at start-up"
                self.store.log_event("job.recovered", message, job.id)
        self.reconcile()

    def after_store_outage(self) -> int:
        """The job store answers again: take up what it may have lost, then resend queued jobs.

        A database that lost its last commits (a crash with asynchronous commit, a fail-over
        to a replica that lagged, a restore from a backup) may have lost rows of received
        instances and whole jobs. Spooled files without a row are recorded again
        (:func:`record_unrecorded_files`); an exam already handed out that has no job any more
        is handed out again, so a job is made for it; every queued job's message is sent again.

        Returns
        -------
        int
            Exams handed out again.
        """
        record_unrecorded_files(self.store, self.spool, self.pseudonyms)
        with self._lock:
            handed = self.tracker.handed_out()
        lost = [
            study_uid
            for study_uid, (series, n_instances) in handed.items()
            if not self.store.has_job(study_uid, series, n_instances)
        ]
        now = time.time()
        with self._lock:
            for study_uid in lost:
                self.tracker.hand_out_again(study_uid, now)
        if lost:
            message = f"job store came back without the job of {len(lost)} exam(s): made again"
            log.warning("%s", message)
            self.store.log_event("store.jobs_lost", message)
        self.resend_queued("job store reachable again")
        return len(lost)

    def _received_after_runs(self, replay: list[InstanceInfo]) -> dict[str, tuple[int, ExamReady]]:
        """Exams with a job whose instances (same count) were received after its run began."""
        by_study: dict[str, dict[str, list[InstanceInfo]]] = {}
        for info in replay:
            by_study.setdefault(info.study_uid, {}).setdefault(info.series_uid, []).append(info)
        out: dict[str, tuple[int, ExamReady]] = {}
        for job in self.store.list_jobs(limit=100000):
            series = by_study.get(job.study_uid, {})
            mine = {uid: series[uid] for uid in job.series_uids if uid in series}
            if job.started_at is None or len(mine) != len(job.series_uids):
                continue
            late = tuple(
                sorted(
                    info.sop_instance_uid
                    for infos in mine.values()
                    for info in infos
                    if info.received_at > job.started_at
                )
            )
            n_instances = sum(len(infos) for infos in mine.values())
            if not late or not self.store.has_job(job.study_uid, list(mine), n_instances):
                continue
            exam = ExamReady(
                study_uid=job.study_uid,
                series=mine,
                components={},
                complete=True,
                reason="instances received again before a restart",
                update=True,
                resent=late,
            )
            out.setdefault(job.study_uid, (job.id, exam))
        return out

    def reconcile(self, now: float | None = None) -> list[int]:
        """Queue again every running or sending job whose lease expired; their ids.

        A job whose lease is alive (a worker renews it) is never touched, so a restarted
        `serve` does not run a job twice.
        """
        moment = time.time() if now is None else now
        taken = []
        for job in self.store.stale_jobs(moment):
            # The message first: if the broker is away nothing changes and the next round
            # tries again. A message that finds the job renewed or taken meanwhile is dropped.
            task = PROCESS_TASK if job.state is JobState.RUNNING else SEND_TASK
            if not self._enqueue(task, job.id):
                break
            step = self.store.take_stale(job.id, wait_s=self.settings.jobs.lease_s, now=moment)
            if step is None:
                continue
            log.warning("job %d: lease expired, %s again", job.id, step.value)
            taken.append(job.id)
        return taken

    def _watch(self) -> None:
        next_reconcile = time.monotonic() + self.settings.jobs.reconcile_interval_s
        failing: dict[str, str] = {}  # step -> error of its last failure
        store_away = False
        while not self._stop.wait(TICK_S):
            self._watch_step("dispatching ready exams", self.dispatch_ready, failing)
            self._watch_step("restarting a local worker", self.supervise, failing)
            if self._broker_error:  # away: look every tick, to resume as soon as it answers
                self._watch_step("checking the broker", self.check_broker, failing)
            if store_away or time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + self.settings.jobs.reconcile_interval_s
                if not self._broker_error:
                    self._watch_step("checking the broker", self.check_broker, failing)
                self._watch_step("looking for expired leases", self.reconcile, failing)
            if any(STORE_UNREACHABLE_TEXT in error for error in failing.values()):
                store_away = True
            elif store_away:
                store_away = False
                self._watch_step(
                    "taking up after the job store came back", self.after_store_outage, failing
                )

    @staticmethod
    def _watch_step(name: str, step: Any, failing: dict[str, str]) -> None:
        """Run one step of the watcher; a failure is logged when it starts and when it ends.

        While the job store (or the broker) is away every tick fails the same way: the first
        failure is logged (a job store that does not answer in one line, anything else with
        its traceback), the repeats only at debug level.
        """
        try:
            step()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            store_away = isinstance(exc, STORE_UNREACHABLE)
            if store_away:
                error = f"{STORE_UNREACHABLE_TEXT}: {error}"
            if name not in failing and store_away:  # expected in an outage: no traceback
                log.error("%s failed, %s; trying again every %g s", name, error, TICK_S)
            elif name not in failing:
                log.exception("%s failed; trying again every %g s", name, TICK_S)
            else:
                log.debug("%s failed again: %s", name, error)
            failing[name] = error
            return
        if failing.pop(name, None) is not None:
            log.warning("%s works again", name)

    def _purge_periodically(self) -> None:
        """Run the retention purge every ``retention.interval_min`` until stopped."""
        interval_s = self.settings.retention.interval_min * 60.0
        wait_s = min(FIRST_PURGE_S, interval_s)
        while not self._stop.wait(wait_s):
            wait_s = interval_s
            try:
                purge(self.settings, self.store)
            except Exception:
                log.exception("retention purge failed; will try again")
                self.store.log_event("retention.failed", "purge failed; see the service log")

    # --- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start workers, recover, then listen."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        removed = self.spool.remove_partial()
        if removed:
            log.warning("removed %d partial spool file(s) left by an earlier crash", removed)
        if self.settings.api.enabled:
            self._start_api()
        self._start_workers()
        self.recover()
        self.batcher.start()
        try:
            self.scp.start()
        except OSError as exc:
            node = self.settings.node
            ports = f"{node.port}" + (f"/{node.tls.port}" if node.tls is not None else "")
            raise ValueError(
                f"node.port: cannot listen for DICOM on {node.host}:{ports} "
                f"({exc.strerror or exc}); set node.port (--port) to a free port"
            ) from exc
        self._watcher = threading.Thread(target=self._watch, name="cordt1-watcher", daemon=True)
        self._watcher.start()
        if self.settings.retention.enabled:
            self._purger = threading.Thread(
                target=self._purge_periodically, name="cordt1-retention", daemon=True
            )
            self._purger.start()
        log.info(
            "cordt1 listening as %s on %s: port %s, TLS port %s",
            self.settings.node.ae_title,
            self.settings.node.host,
            self.scp.port if self.scp.port is not None else "off",
            self.scp.tls_port if self.scp.tls_port is not None else "off",
        )

    def stop(self) -> None:
        """Stop listening, then the local workers and their pool children.

        Workers get SIGTERM (warm shutdown: a running task may finish) and
        ``jobs.shutdown_timeout_s``; whatever of their process group is left then is killed.
        A job cut short keeps its lease until it expires and is then taken again.
        """
        self._stop.set()
        self.scp.stop()
        if self.api is not None:
            self.api.stop()
        self.batcher.close()
        if self._watcher:
            self._watcher.join(timeout=5)
        if self._purger:
            self._purger.join(timeout=30)
        for proc in self._workers:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.jobs.shutdown_timeout_s
        for proc in self._workers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d still busy after SIGTERM; killing it", proc.pid)
        for proc in self._workers:
            _signal_group(proc, signal.SIGKILL)  # pool children left behind, if any
            if proc.poll() is None:
                proc.wait(timeout=10)
        self.store.close()

    def _start_api(self) -> None:
        """Serve the HTTP API and web page (raises ValueError when the port is taken)."""
        from service.api.app import create_api
        from service.api.server import ApiServer

        app = create_api(self.settings, self.store, self.celery, self.controls)
        self.api = ApiServer(app, self.settings.api.host, self.settings.api.port)
        self.api.start()
        log.info("HTTP API and web page on http://%s:%d/", self.api.host, self.api.port)

    def _start_workers(self) -> None:
        if self.settings.workers <= 0:
            return
        run_dir = self.settings.data_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        settings_file = run_dir / "settings.json"
        content = self.settings.model_dump(mode="json")
        if self.settings.pseudonym_secret is not None:  # dumped masked; the workers need it
            content["pseudonym_secret"] = self.settings.pseudonym_secret.get_secret_value()
        settings_file.unlink(missing_ok=True)
        fd = os.open(settings_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
        self._workers.append(self._spawn_worker(settings_file))

    def _spawn_worker(self, settings_file: Path) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "service.cli",
            "worker",
            "--settings-json",
            str(settings_file),
            "--concurrency",
            str(self.settings.workers),
        ]
        # The worker logs to our stderr (the journal under systemd) and, with log_file set, to
        # its own rotated file beside ours (service.logs).
        return subprocess.Popen(
            command,
            env=os.environ,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent,
        )

    def supervise(self) -> list[int]:
        """Start again every local worker that ended on its own; the new process ids.

        A worker whose consumer crashed, or that was killed, takes the messages it had
        reserved with it: queued jobs get a new message (a duplicate is dropped when the job
        is taken), running and sending ones come back when their lease expires.
        """
        restarted = []
        for index, proc in enumerate(self._workers):
            code = proc.poll()
            if code is None or self._stop.is_set():
                continue
            _signal_group(proc, signal.SIGKILL)  # pool children it may have left
            replacement = self._spawn_worker(self.settings.data_dir / "run" / "settings.json")
            self._workers[index] = replacement
            message = (
                f"local worker {proc.pid} ended (exit status {code}); "
                f"started again as {replacement.pid}"
            )
            log.error("%s", message)
            self.store.log_event("worker.restarted", message)
            restarted.append(replacement.pid)
        if restarted:
            for job in self.store.list_jobs(limit=100000, states=[JobState.QUEUED]):
                self._enqueue(PROCESS_TASK, job.id)
        return restarted

    def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        done = threading.Event()

        def _handle(signum: int, _frame: Any) -> None:
            log.info("signal %d: shutting down", signum)
            done.set()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)
        try:
            self.start()
        except BaseException:
            self.stop()  # workers, API and threads started so far
            raise
        ready_file = self.settings.data_dir / "run" / "ready.json"
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "dicom_port": self.scp.port,
                    "dicom_tls_port": self.scp.tls_port,
                    "http_port": self.api.port if self.api is not None else None,
                }
            )
        )
        try:
            done.wait()
        finally:
            ready_file.unlink(missing_ok=True)
            self.stop()
