"""What a worker does with a job: process the exam, then send the results, recording each step.

Independent of Celery so it can be tested and run inline; :mod:`service.celery_app` wraps it.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom

from dicom_node.components import classify
from dicom_node.scu import Destination, SendError, send
from reports.identity import ResultIdentity
from service import __version__
from service.bids import exam_labels, export_exam
from service.exam import ExamError, ExamSeries
from service.history import choose_prior
from service.model_build import ScoringModel, load_scoring_model
from service.pipeline import process_exam
from service.protocol import load_site_protocols
from service.settings import Settings
from service.store import JobState, JobStore

__all__ = ["JobRunner", "SendOutcome"]

log = logging.getLogger(__name__)


class SendOutcome(StrEnum):
    """What became of one send attempt."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


def result_identity(settings: Settings) -> ResultIdentity:
    """The identity every result object carries, from the settings."""
    return ResultIdentity(
        software_version=__version__, research_use_text=settings.research_use_text
    )


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
        """Where a job writes its outputs."""
        return self.settings.results_dir / f"job-{job_id:06d}"

    def process(self, job_id: int) -> bool:
        """Claim and process one job; True when results are ready to send.

        A job another worker holds or that is finished is left alone (duplicate delivery).
        Any failure ends the job as failed with a clear error; nothing is raised.
        """
        if not self.store.claim(job_id):
            log.info("job %d not claimed (already taken or finished)", job_id)
            return False
        job = self.store.get_job(job_id)
        out_dir = self.job_dir(job_id)
        try:
            exam, moment = self._exam(job.study_uid, job.series_uids)
            if out_dir.exists():
                shutil.rmtree(out_dir)
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
            if self.settings.bids_dir is not None:
                self._export_bids(exam, out_dir, self.settings.bids_dir)
        except ExamError as exc:
            log.warning("job %d failed: %s", job_id, exc)
            self.store.set_state(job_id, JobState.FAILED, error=str(exc))
            return False
        except Exception as exc:  # an unexpected bug must still end the job visibly
            log.error("job %d crashed:\n%s", job_id, traceback.format_exc())
            self.store.set_state(
                job_id, JobState.FAILED, error=f"internal error: {type(exc).__name__}: {exc}"
            )
            return False
        result = {
            "out_dir": str(out_dir),
            "dicom": [str(p) for p in outputs.dicom_files],
            "summary": outputs.summary,
            "sent": {},
            "send_attempts": 0,
        }
        if not self.settings.send.destinations:
            self.store.set_state(job_id, JobState.DONE, result=result)
            return False
        self.store.set_state(job_id, JobState.SENDING, result=result)
        return True

    def send(self, job_id: int) -> SendOutcome:
        """Send a job's results to every destination that has not had them yet."""
        job = self.store.get_job(job_id)
        if job.state is not JobState.SENDING:
            return SendOutcome.FAILED
        result = dict(job.result)
        sent: dict[str, bool] = dict(result.get("sent", {}))
        attempts = int(result.get("send_attempts", 0)) + 1
        result["send_attempts"] = attempts
        files = [Path(p) for p in result.get("dicom", [])]
        errors = []
        for text in self.settings.send.destinations:
            if sent.get(text):
                continue
            destination = Destination.parse(text)
            try:
                tls = self.settings.send.client_tls() if destination.tls else None
            except ValueError as exc:  # a certificate file went missing: may be fixed
                errors.append(f"sending to {destination} failed: {exc}")
                continue
            try:
                send(
                    files,
                    destination,
                    calling_ae=self.settings.send.calling_ae,
                    timeout_s=self.settings.send.timeout_s,
                    tls=tls,
                )
            except SendError as exc:
                errors.append(str(exc))
                continue
            sent[text] = True
            self.store.log_event(
                "results.sent", f"job {job_id}: {len(files)} object(s) sent to {text}", job_id
            )
        result["sent"] = sent
        if not errors:
            self.store.set_state(job_id, JobState.DONE, error="", result=result)
            return SendOutcome.SENT
        error = "; ".join(errors)
        if attempts >= self.settings.send.attempts:
            self.store.set_state(
                job_id,
                JobState.FAILED,
                error=f"results not delivered after {attempts} attempt(s): {error}",
                result=result,
            )
            return SendOutcome.FAILED
        self.store.set_state(
            job_id,
            JobState.SENDING,
            error=f"attempt {attempts} of {self.settings.send.attempts} failed: {error}",
            result=result,
        )
        return SendOutcome.RETRY

    @staticmethod
    def _export_bids(exam: ExamSeries, out_dir: Path, bids_dir: Path) -> None:
        """Export the exam's NIfTI results as BIDS derivatives; failing raises ExamError."""
        try:
            written = export_exam(out_dir, bids_dir, exam_labels(exam))
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
        if not patient:
            return None
        others = [
            j.result["summary"]
            for j in sorted(
                self.store.list_jobs(limit=100000, states=[JobState.DONE]), key=lambda j: j.id
            )
            if j.patient_key == patient
            and j.study_uid != study_uid
            and j.id != job_id
            and "summary" in j.result
        ]
        prior = choose_prior(others, moment)
        return dict(prior) if prior is not None else None

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
