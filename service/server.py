"""`cordt1 serve`: the receiver, the completion watcher, the dispatcher and local workers.

The SCP's handler only spools and records; a watcher thread asks the exam tracker every
``TICK_S`` which exams are ready, records a job for each and hands its id to Celery.
"""

from __future__ import annotations

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
from typing import Any

from dicom_node.completion import ExamReady, ExamTracker
from dicom_node.components import Component
from dicom_node.instance import InstanceInfo
from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP, StoreRefusal
from dicom_node.spool import Spool
from dicom_node.status import describe
from service.celery_app import PROCESS_TASK, SEND_TASK, create_app
from service.exam import own_markers
from service.pseudonym import pseudonym_key
from service.settings import Settings
from service.store import JobState, JobStore

__all__ = [
    "Service",
    "info_from_dict",
    "info_to_dict",
    "own_markers",
    "record_association",
    "record_instance",
    "record_refusal",
]

log = logging.getLogger(__name__)

TICK_S = 0.5


def info_to_dict(info: InstanceInfo) -> dict[str, Any]:
    """A JSON-ready copy of an InstanceInfo."""
    data = dataclasses.asdict(info)
    data["path"] = str(info.path)
    data["component"] = str(info.component)
    return data


def info_from_dict(data: dict[str, Any]) -> InstanceInfo:
    """Inverse of :func:`info_to_dict`."""
    values = dict(data)
    values["path"] = Path(values["path"])
    values["component"] = Component(values["component"])
    return InstanceInfo(**values)


def record_instance(store: JobStore, info: InstanceInfo) -> None:
    """Keep one spooled instance in the job store (the tracker is rebuilt from these)."""
    store.record_instance(
        sop_instance_uid=info.sop_instance_uid,
        study_uid=info.study_uid,
        series_uid=info.series_uid,
        component=str(info.component),
        path=str(info.path),
        calling_ae=info.calling_ae,
        received_at=info.received_at,
        own_result=info.is_own_result,
        info=info_to_dict(info),
    )


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
        self.spool = Spool(settings.spool_dir, settings.data_dir / "quarantine")
        self.tracker = ExamTracker(settle_s=settings.node.settle_s, stale_s=settings.node.stale_s)
        self.celery = create_app(settings)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._workers: list[subprocess.Popen[bytes]] = []
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
            ),
            self.spool,
            on_instance=self.on_instance,
            on_association=self.on_association,
            own_markers=own_markers(),
            pseudonyms=pseudonym_key(settings),
            on_refusal=self.on_refusal,
        )

    # --- event handlers (called from the SCP's threads; keep them short) ---------------------
    def on_instance(self, info: InstanceInfo) -> None:
        """Record a spooled instance and feed the exam tracker."""
        record_instance(self.store, info)
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
        """Record and enqueue a job for every exam the tracker declares ready."""
        with self._lock:
            ready: list[ExamReady] = self.tracker.ready(time.time() if now is None else now)
        job_ids = []
        for exam in ready:
            first = next(iter(exam.series.values()))[0]
            n_instances = sum(len(infos) for infos in exam.series.values())
            if self.store.has_job(exam.study_uid, list(exam.series), n_instances):
                continue
            job_id = self.store.create_job(
                study_uid=exam.study_uid,
                patient_key=first.patient_key,
                series_uids=list(exam.series),
                n_instances=n_instances,
                complete=exam.complete,
                reason=exam.reason,
            )
            self.celery.send_task(PROCESS_TASK, args=[job_id])
            job_ids.append(job_id)
            log.info("job %d queued for study %s", job_id, exam.study_uid)
        return job_ids

    def recover(self) -> None:
        """After a restart: rebuild the tracker from the store and re-queue unfinished jobs.

        Exams that already have a job are not dispatched again (see :meth:`dispatch_ready`).
        """
        replay = [info_from_dict(d) for d in self.store.instance_infos()]
        with self._lock:
            for info in replay:
                if info.path.exists():
                    self.tracker.add(info, info.received_at)
        for job in self.store.unfinished_jobs():
            if job.state is JobState.SENDING:
                self.celery.send_task(SEND_TASK, args=[job.id])
            else:
                if job.state is JobState.RUNNING:
                    self.store.requeue(job.id)
                self.celery.send_task(PROCESS_TASK, args=[job.id])
            self.store.log_event("job.recovered", f"job {job.id} re-queued at start-up", job.id)

    def _watch(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.dispatch_ready()
            except Exception:
                log.exception("dispatching ready exams failed; will try again")

    # --- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start workers, recover, then listen."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        removed = self.spool.remove_partial()
        if removed:
            log.warning("removed %d partial spool file(s) left by an earlier crash", removed)
        self._start_workers()
        self.recover()
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
        """Stop listening, stop local workers (warm shutdown: running jobs finish)."""
        self._stop.set()
        self.scp.stop()
        if self._watcher:
            self._watcher.join(timeout=5)
        for proc in self._workers:
            proc.send_signal(signal.SIGTERM)
        for proc in self._workers:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.store.close()

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
        proc = subprocess.Popen(command, env=os.environ)
        self._workers.append(proc)

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
                }
            )
        )
        try:
            done.wait()
        finally:
            ready_file.unlink(missing_ok=True)
            self.stop()
