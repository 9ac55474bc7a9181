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
from service.celery_app import PROCESS_TASK, SEND_TASK, create_app
from service.exam import own_markers
from service.priors import fetch_prior
from service.pseudonym import pseudonym_key
from service.settings import Settings
from service.store import InstanceBatcher, JobState, JobStore

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
    }


def record_instance(store: JobStore, info: InstanceInfo) -> None:
    """Keep one spooled instance in the job store (the tracker is rebuilt from these)."""
    store.record_instance(**instance_row(info))


def record_unrecorded_files(store: JobStore, spool: Spool, pseudonyms: PseudonymKey) -> int:
    """Record spooled files that have no job-store row (a crash before the batch commit).

    Instances are acknowledged once their file is fsynced; their rows are committed in
    batches a few milliseconds later (:class:`service.store.InstanceBatcher`). A crash in
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
        self._workers: list[subprocess.Popen[bytes]] = []
        self._held: dict[str, _HeldExam] = {}
        self._fetched_priors: set[str] = set()
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
            self.tracker.add(info, time.time())

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
        store is held while its prior is fetched from the PACS (see :mod:`service.priors`)
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
        return job_ids

    def _dispatch(self, exam: ExamReady) -> int | None:
        first = next(iter(exam.series.values()))[0]
        n_instances = sum(len(infos) for infos in exam.series.values())
        if self.store.has_job(exam.study_uid, list(exam.series), n_instances):
            return None
        job_id = self.store.create_job(
            study_uid=exam.study_uid,
            patient_key=first.patient_key,
            series_uids=list(exam.series),
            n_instances=n_instances,
            complete=exam.complete,
            reason=exam.reason,
        )
        self.celery.send_task(PROCESS_TASK, args=[job_id])
        log.info("job %d queued for study %s", job_id, exam.study_uid)
        return job_id

    # --- priors from the PACS ----------------------------------------------------------------
    def _hold_for_prior(self, exam: ExamReady, now: float) -> bool:
        """Start fetching the exam's prior and hold the exam, when that is called for."""
        if self.settings.priors.source is None or exam.update or exam.study_uid in self._held:
            return False
        with self._lock:
            if exam.study_uid in self._fetched_priors:
                return False  # a fetched prior: its own prior is not fetched
        first = next(iter(exam.series.values()))[0]
        have = {
            str(info["study_uid"])
            for info in self.store.instance_infos()
            if info.get("patient_key") == first.patient_key
        }
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
        finished = (JobState.DONE, JobState.FAILED)
        return any(
            job.study_uid == held.prior_uid
            for job in self.store.list_jobs(limit=100000, states=list(finished))
        )

    def recover(self) -> None:
        """After a start: rebuild the tracker from the store and queue what nobody works on.

        Queued jobs are queued again (a message may have been lost with the broker); running
        or sending jobs whose lease expired are taken back (:meth:`reconcile`); jobs a live
        worker holds are left alone. Exams that already have a job are not dispatched again
        (see :meth:`dispatch_ready`).
        """
        record_unrecorded_files(self.store, self.spool, self.pseudonyms)
        replay = [info_from_dict(d) for d in self.store.instance_infos()]
        with self._lock:
            for info in replay:
                if info.path.exists():
                    self.tracker.add(info, info.received_at)
        for job in self.store.list_jobs(limit=100000, states=[JobState.QUEUED]):
            self.celery.send_task(PROCESS_TASK, args=[job.id])
            self.store.log_event("job.recovered", f"job {job.id} re-queued at start-up", job.id)
        self.reconcile()

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
            self.celery.send_task(task, args=[job.id])
            step = self.store.take_stale(job.id, wait_s=self.settings.jobs.lease_s, now=moment)
            if step is None:
                continue
            log.warning("job %d: lease expired, %s again", job.id, step.value)
            taken.append(job.id)
        return taken

    def _watch(self) -> None:
        next_reconcile = time.monotonic() + self.settings.jobs.reconcile_interval_s
        while not self._stop.wait(TICK_S):
            try:
                self.dispatch_ready()
            except Exception:
                log.exception("dispatching ready exams failed; will try again")
            try:
                self.supervise()
            except Exception:
                log.exception("restarting a local worker failed; will try again")
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + self.settings.jobs.reconcile_interval_s
                try:
                    self.reconcile()
                except Exception:
                    log.exception("looking for expired leases failed; will try again")

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
        self.scp.start()
        self._watcher = threading.Thread(target=self._watch, name="cordt1-watcher", daemon=True)
        self._watcher.start()
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
                self.celery.send_task(PROCESS_TASK, args=[job.id])
        return restarted

    def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        done = threading.Event()

        def _handle(signum: int, _frame: Any) -> None:
            log.info("signal %d: shutting down", signum)
            done.set()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)
        self.start()
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
