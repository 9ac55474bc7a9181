"""`cordt1 process`: every exam in a folder, processed without the network."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from dicom_node.instance import patient_key
from service.exam import ExamError, ExamSeries, dicom_files, find_exam_series
from service.jobs import result_identity
from service.model_build import load_scoring_model
from service.pipeline import process_exam
from service.protocol import load_site_protocols
from service.settings import Settings

__all__ = ["FolderReport", "process_folder"]

log = logging.getLogger(__name__)


@dataclass
class FolderReport:
    """Per exam: output folder or error."""

    done: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable lines, one per exam."""
        out = [f"done   {uid}: {path}" for uid, path in self.done.items()]
        out += [f"FAILED {uid}: {error}" for uid, error in self.failed.items()]
        if not self.done and not self.failed:
            out.append("no DICOM exam found")
        return out


def _patient_and_date(exam: ExamSeries) -> tuple[str, str]:
    """Pseudonymous patient key and study date of an exam (for follow-up ordering)."""
    first = next(files[0] for series in exam.by_component.values() for files in series.values())
    header = pydicom.dcmread(first, stop_before_pixels=True)
    key = patient_key(str(header.get("IssuerOfPatientID", "")), str(header.get("PatientID", "")))
    return key, f"{header.get('StudyDate', '') or ''}{header.get('StudyTime', '') or ''}"


def process_folder(input_dir: Path, out_dir: Path, settings: Settings) -> FolderReport:
    """Process every exam under ``input_dir`` (any folder layout) into ``out_dir/<study UID>``.

    One exam failing does not stop the others; its error is in the report. Exams of one
    patient run in date order, each compared with the one before (follow-up).
    """
    report = FolderReport()
    profiles = load_site_protocols(settings.site_protocols)
    identity = result_identity(settings)
    model = load_scoring_model(settings.model_dir) if settings.model_dir else None
    exams = find_exam_series(dicom_files(input_dir))
    previous: dict[str, dict[str, Any]] = {}
    for study_uid in sorted(exams, key=lambda uid: _patient_and_date(exams[uid])):
        exam = exams[study_uid]
        patient, _date = _patient_and_date(exam)
        target = out_dir / study_uid
        try:
            outputs = process_exam(
                exam,
                target,
                profiles=profiles,
                identity=identity,
                model=model,
                z_threshold=settings.z_threshold,
                prior_summary=previous.get(patient),
            )
        except ExamError as exc:
            log.warning("exam %s failed: %s", study_uid, exc)
            report.failed[study_uid] = str(exc)
            continue
        previous[patient] = outputs.summary
        report.done[study_uid] = target
    return report
