"""What a worker does with a job: process the exam, then send the results, recording each step.

Each step runs under a lease on the job (renewed by a :class:`Heartbeat`); a run writes into
its own folder ``results/job-N/run-M`` and publishes it by switching ``results/job-N/current``.

Independent of Celery so it can be tested and run inline; :mod:`service.jobs.celery_app` wraps it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from sqlalchemy.exc import InterfaceError, OperationalError

from dicom_node.components import classify
from dicom_node.scu import Destination
from service.exports.bids import exam_labels, export_exam
from service.inputs.exam import ExamError, ExamSeries
from service.inputs.protocol import load_site_protocols
from service.jobs.corrections import DIGEST_KEY, input_digests
from service.jobs.delivery import deliver, result_objects
from service.jobs.store import JobState, JobStore
from service.pipeline.identity import result_identity
from service.pipeline.model_build import ScoringModel, load_scoring_model
from service.pipeline.run import process_exam
from service.pseudonym import pseudonym_key
from service.settings import Settings

__all__ = ["Heartbeat", "JobRunner", "SendOutcome", "lease_owner", "publish_run"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Errors of a job store that does not answer (restarting, network gone): worth a retry.
STORE_UNREACHABLE = (OperationalError, InterfaceError)


class SendOutcome(StrEnum):
    """What became of one send attempt."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    #: Another worker holds the job, it is not waiting to be sent, or the lease was lost.
    SKIPPED = "skipped"


def lease_owner() -> str:
    """A name for one hold on a job: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """Renews a job's lease from a thread while the work goes on.

    ``lost`` is set when the lease could not be renewed because somebody else has the job
    (an operator cancelled it, or it expired and another worker took it): the work must not
    publish anything then. A store that does not answer is tried again at the next beat.
    """

    def __init__(self, store: JobStore, job_id: int, owner: str, lease_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.owner = owner
        self.lease_s = lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"cordt1-lease-{job_id}", daemon=True
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.store.renew(self.job_id, self.owner, self.lease_s):
                    # also right after the step recorded its own outcome: whoever acts on
                    # ``lost`` says so
                    log.debug("job %d: lease no longer held by %s", self.job_id, self.owner)
                    self.lost.set()
                    return
            except Exception as exc:  # database away for a moment: try at the next beat
                log.warning("job %d: lease not renewed: %s", self.job_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def publish_run(job_dir: Path, run_dir: Path) -> None:
    """Point ``job_dir/current`` at ``run_dir`` (one atomic rename of a symlink)."""
    link = job_dir / "current"
    temporary = job_dir / f".current-{run_dir.name}-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(run_dir.name, temporary)
    os.replace(temporary, link)


@dataclass
class JobRunner:
    """Runs the steps of jobs against the job store.

    Parameters
    ----------
    settings : Settings
    store : JobStore
    """

    settings: Settings
    store: JobStore
    _scoring_model: ScoringModel | None = field(default=None, repr=False)

    def job_dir(self, job_id: int) -> Path:
        """Where a job's runs write (``run-NNN``) and ``current`` points at the latest."""
        return self.settings.results_dir / f"job-{job_id:06d}"

    def run_dir(self, job_id: int, run: int) -> Path:
        """The folder of one run of a job; no other run writes or deletes there."""
        return self.job_dir(job_id) / f"run-{run:03d}"

    def process(self, job_id: int) -> bool:
        """Take and process one job; True when results are ready to send.

        A job another worker holds under a live lease, or a finished one, is left alone (a
        message delivered twice); a running job whose lease expired is taken over. The run
        writes into its own folder and is published only if it still holds the lease. Any
        failure ends the job as failed with a clear error; nothing is raised.
        """
        lease_s = self.settings.jobs.lease_s
        owner = lease_owner()
        run = self._retry(self.store.claim, job_id, owner, lease_s)
        if run is None:
            log.info("job %d not taken (another worker holds it, or it is finished)", job_id)
            return False
        with Heartbeat(self.store, job_id, owner, lease_s) as beat:
            return self._process_run(job_id, run, owner, beat)

    def _process_run(self, job_id: int, run: int, owner: str, beat: Heartbeat) -> bool:
        job = self.store.get_job(job_id)
        lease_s = self.settings.jobs.lease_s
        # What this run reads, so that instances received again can be told apart from a
        # correction (service.jobs.corrections); kept with a failure too.
        read: dict[str, Any] = {"run": run}
        try:
            run, out_dir = self._new_run_dir(job_id, run)
            read["run"] = run
            read[DIGEST_KEY] = input_digests(self.store.instance_paths(job.series_uids))
            exam, moment = self._exam(job.study_uid, job.series_uids)
            outputs = process_exam(
                exam,
                out_dir,
                profiles=load_site_protocols(self.settings.site_protocols),
                identity=result_identity(self.settings),
                model=self._model(),
                z_threshold=self.settings.z_threshold,
                prior_summary=self._prior_summary(job.id, job.patient_key, job.study_uid, moment),
                write_nifti=self.settings.nifti_results or self.settings.bids_dir is not None,
                writer_processes=self.settings.result_writer_processes,
            )
            if beat.lost.is_set():
                log.warning("job %d run %d lost its lease; results not published", job_id, run)
                return False
            if self.settings.bids_dir is not None:
                self._export_bids(exam, out_dir, self.settings.bids_dir)
        except STORE_UNREACHABLE:
            # not the exam's fault: the lease runs out and the job is processed again
            log.warning("job %d run %d: job store unreachable; left to its lease", job_id, run)
            raise
        except ExamError as exc:
            error = str(exc) + self._disk_full(exc, job_id, run)
            log.warning("job %d failed: %s", job_id, error)
            self._retry(
                self.store.finish, job_id, owner, JobState.FAILED, error=error, result=read
            )
            return False
        except Exception as exc:  # an unexpected bug must still end the job visibly
            note = self._disk_full(exc, job_id, run)
            if not note:
                log.error("job %d crashed:\n%s", job_id, traceback.format_exc())
            error = f"internal error: {type(exc).__name__}: {exc}" + note
            self._retry(
                self.store.finish, job_id, owner, JobState.FAILED, error=error, result=read
            )
            return False
        destinations = list(self.settings.send.destinations)
        result = {
            **read,
            "run": run,
            "out_dir": str(out_dir),
            "dicom": [str(p) for p in outputs.dicom_files],
            "summary": outputs.summary,
            "destinations": destinations,
            "send_attempts": 0,
        }
        state = JobState.SENDING if destinations else JobState.DONE
        recorded = self._retry(
            self.store.finish, job_id, owner, state, result=result, wait_s=lease_s
        )
        if not recorded and not self._recorded_before(job_id, state, run):
            log.warning("job %d run %d lost its lease; results not published", job_id, run)
            return False
        publish_run(self.job_dir(job_id), out_dir)
        return state is JobState.SENDING

    def _disk_full(self, exc: BaseException, job_id: int, run: int) -> str:
        """For a run that failed because its disk filled up: what to say, after removing the
        run's own unpublished folder (its partial files hold the space that ran out).

        Returns "" for any other failure. The error of a helper process arrives as text
        only, so the text is looked at as well as the exception chain.
        """
        chain: list[BaseException] = []
        cause: BaseException | None = exc
        while cause is not None and cause not in chain:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        full = any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain)
        if not (full or "[Errno 28]" in str(exc) or "No space left" in str(exc)):
            return ""
        results = self.settings.results_dir
        out_dir = self.run_dir(job_id, run)
        removed = ""
        published = (self.job_dir(job_id) / "current").resolve()
        if out_dir.is_dir() and published != out_dir.resolve():
            shutil.rmtree(out_dir, ignore_errors=True)
            removed = f"; its partial folder {out_dir.name} was removed"
        try:
            free_mb = shutil.disk_usage(results).free / 2**20
        except OSError:
            free_mb = float("nan")
        return (
            f" -- the disk holding {results} ran full{removed} ({free_mb:.0f} MB free now); "
            f"free space there, then `cordt1 retry {job_id}`"
        )

    def _new_run_dir(self, job_id: int, run: int) -> tuple[int, Path]:
        """Create the run's own folder; the next free number if ``run-NNN`` exists already.

        A run folder is never reused: one exists already when the job store forgot a run
        (a database that lost its last commits in a crash, or restored from a backup), and
        that run may still be writing there.
        """
        first = run
        while True:
            out_dir = self.run_dir(job_id, run)
            try:
                out_dir.mkdir(parents=True)
            except FileExistsError:
                run += 1
                continue
            except OSError as exc:
                raise ExamError(f"run folder {out_dir} cannot be created: {exc}") from exc
            if run != first:
                log.warning(
                    "job %d: run folder run-%03d exists already (the job store forgot a run); "
                    "this run writes into run-%03d",
                    job_id,
                    first,
                    run,
                )
            return run, out_dir

    def _retry(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)`` on the job store, tried again while the store is away.

        A job store that restarts (or a network that drops) for less than ``jobs.lease_s``
        does not lose a step's outcome: the call is repeated every second (every fifth of a
        shorter lease) until then, with one log line when it starts failing and one when it
        works again; after that the error is raised (the job's lease runs out and `serve`
        takes it back).
        """
        deadline = time.monotonic() + self.settings.jobs.lease_s
        failed = False
        while True:
            try:
                value = call(*args, **kwargs)
            except STORE_UNREACHABLE as exc:
                if time.monotonic() >= deadline:
                    raise
                if not failed:
                    log.warning(
                        "job store unreachable (%s); %s tried again for up to %g s",
                        str(exc).splitlines()[0][:200],
                        getattr(call, "__name__", "the call"),
                        self.settings.jobs.lease_s,
                    )
                    failed = True
                time.sleep(min(1.0, self.settings.jobs.lease_s / 5))
                continue
            if failed:
                log.warning("job store works again: %s done", getattr(call, "__name__", "call"))
            return value

    def _recorded_before(self, job_id: int, state: JobState, run: int) -> bool:
        """Whether this run's outcome is in the store although ``finish`` said no.

        A commit whose answer was lost (the store went away just then) is repeated by
        :meth:`_retry`; the repeat finds the lease given up by the first one.
        """
        try:
            job = self.store.get_job(job_id)
        except Exception:
            return False
        return job.state is state and job.result.get("run") == run and not job.lease_owner

    def send(self, job_id: int) -> SendOutcome:
        """Send a job's results to every destination, skipping what each one confirmed.

        Each object's delivery is recorded per destination (see :mod:`service.jobs.delivery`); a
        destination that cannot be parsed fails the job at once (no attempt can succeed).
        """
        lease_s = self.settings.jobs.lease_s
        owner = lease_owner()
        if not self._retry(self.store.claim_send, job_id, owner, lease_s):
            log.info("job %d: not sending (held by another worker, or not waiting)", job_id)
            return SendOutcome.SKIPPED
        with Heartbeat(self.store, job_id, owner, lease_s) as beat:
            return self._send_run(job_id, owner, beat)

    def _send_run(self, job_id: int, owner: str, beat: Heartbeat) -> SendOutcome:
        job = self.store.get_job(job_id)
        result = dict(job.result)
        run = int(result.get("run", job.attempts))
        attempts = int(result.get("send_attempts", 0)) + 1
        result["send_attempts"] = attempts
        destinations = list(result.get("destinations", self.settings.send.destinations))
        invalid = []
        for text in destinations:
            try:
                Destination.parse(text)
            except ValueError as exc:
                invalid.append(str(exc))
        if invalid:
            error = "results not sent, bad destination: " + "; ".join(invalid)
            self._retry(
                self.store.finish, job_id, owner, JobState.FAILED, error=error, result=result
            )
            return SendOutcome.FAILED
        try:
            objects = result_objects(result.get("dicom", []))
        except (OSError, ValueError) as exc:
            error = f"result files of run {run} cannot be read: {exc}"
            self._retry(
                self.store.finish, job_id, owner, JobState.FAILED, error=error, result=result
            )
            return SendOutcome.FAILED
        errors = []
        for text in destinations:
            try:
                tls = self.settings.send.client_tls() if Destination.parse(text).tls else None
            except ValueError as exc:  # a certificate file went missing: may be fixed
                errors.append(f"sending to {text} failed: {exc}")
                continue
            try:
                report = deliver(
                    self.store,
                    job_id,
                    run,
                    text,
                    objects,
                    calling_ae=self.settings.send.calling_ae,
                    timeout_s=self.settings.send.timeout_s,
                    keep_going=lambda: not beat.lost.is_set(),
                    tls=tls,
                )
            except Exception as exc:  # a bug or a surprise of the network stack: counted as
                # a failed attempt, so the job ends failed after send.attempts, never stuck
                log.error(
                    "job %d: sending to %s crashed:\n%s", job_id, text, traceback.format_exc()
                )
                errors.append(f"sending to {text} failed: internal error: {type(exc).__name__}")
                continue
            if report.interrupted:
                log.warning("job %d: lease lost while sending; stopped", job_id)
                return SendOutcome.SKIPPED
            if report.sent or report.found_in_doubt:
                self.store.log_event(
                    "results.sent",
                    f"job {job_id} run {run}: {report.sent} object(s) sent to {text}"
                    + (f", {report.already} already there" if report.already else "")
                    + (
                        f", {report.found_in_doubt} found there after an interrupted send"
                        if report.found_in_doubt
                        else ""
                    ),
                    job_id,
                )
            errors.extend(report.errors)
        if not errors:
            self._retry(self.store.finish, job_id, owner, JobState.DONE, error="", result=result)
            return SendOutcome.SENT
        error = "; ".join(dict.fromkeys(errors))
        if attempts >= self.settings.send.attempts:
            self._retry(
                self.store.finish,
                job_id,
                owner,
                JobState.FAILED,
                error=f"results not delivered after {attempts} attempt(s): {error}",
                result=result,
            )
            return SendOutcome.FAILED
        self._retry(
            self.store.finish,
            job_id,
            owner,
            JobState.SENDING,
            error=f"attempt {attempts} of {self.settings.send.attempts} failed: {error}",
            result=result,
            wait_s=self.settings.send.retry_delay_s(attempts) + self.settings.jobs.lease_s,
        )
        return SendOutcome.RETRY

    def retry_delay_s(self, job_id: int) -> float:
        """Seconds until the next send of a job whose last try failed (back-off by tries)."""
        attempts = int(self.store.get_job(job_id).result.get("send_attempts", 1))
        return self.settings.send.retry_delay_s(max(attempts, 1))

    def _export_bids(self, exam: ExamSeries, out_dir: Path, bids_dir: Path) -> None:
        """Export the exam's NIfTI results as BIDS derivatives; failing raises ExamError."""
        try:
            written = export_exam(
                out_dir, bids_dir, exam_labels(exam, pseudonym_key(self.settings))
            )
        except (OSError, ValueError) as exc:
            raise ExamError(f"BIDS export to {bids_dir} failed: {exc}") from exc
        log.info("exam %s exported as BIDS derivatives: %d file(s)", exam.study_uid, len(written))

    def _model(self) -> ScoringModel | None:
        """The configured normative model (loaded once per worker process)."""
        if self.settings.model_dir is None:
            return None
        if self._scoring_model is None:
            try:
                self._scoring_model = load_scoring_model(self.settings.model_dir)
            except (OSError, ValueError) as exc:
                raise ExamError(
                    f"normative model {self.settings.model_dir} cannot be loaded: {exc}"
                ) from exc
        return self._scoring_model

    def _prior_summary(
        self, job_id: int, patient: str, study_uid: str, moment: tuple[str, str]
    ) -> dict[str, Any] | None:
        """Summary of the same patient's latest exam taken before this one, if processed."""
        return self.store.prior_summary(
            patient_key=patient, study_uid=study_uid, job_id=job_id, moment=moment
        )

    def _exam(
        self, study_uid: str, series_uids: tuple[str, ...]
    ) -> tuple[ExamSeries, tuple[str, str]]:
        """The exam's files by component, and its (StudyDate, StudyTime), empty if unknown."""
        exam = ExamSeries(study_uid=study_uid)
        moment = ("", "")
        paths = self.store.instance_paths(series_uids)
        for series_uid, files in paths.items():
            existing = [Path(p) for p in files if Path(p).exists()]
            if not existing:
                raise ExamError(f"series {series_uid}: no received file is left in the spool")
            header = pydicom.dcmread(existing[0], stop_before_pixels=True)
            exam.by_component.setdefault(classify(header), {})[series_uid] = existing
            if not moment[0]:
                moment = (str(header.get("StudyDate") or ""), str(header.get("StudyTime") or ""))
        return exam, moment
