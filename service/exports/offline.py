"""`cordt1 process`: every exam in a folder, processed without the network."""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from dicom_node.instance import PseudonymKey
from service.exports.bids import exam_labels, export_exam, session_label
from service.exports.group_table import TABLE_NAME, exam_rows, update_table
from service.inputs.exam import ExamError, ExamSeries, dicom_files, find_exam_series
from service.inputs.protocol import load_site_protocols
from service.pipeline.identity import result_identity
from service.pipeline.model_build import load_scoring_model
from service.pipeline.run import process_exam
from service.pseudonym import pseudonym_key
from service.settings import Settings

__all__ = ["FolderReport", "lesion_files", "nifti_files", "process_folder"]

log = logging.getLogger(__name__)


@dataclass
class FolderReport:
    """Per exam: output folder or error; why nothing was found; the group table written.

    Attributes
    ----------
    done, failed : dict
        Study UID -> output folder, study UID -> error.
    none_found : str
        When no exam was found: what was searched and what was there (else empty).
    tables : list of Path
        Group tables written (:mod:`service.exports.group_table`).
    """

    done: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    none_found: str = ""
    tables: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable lines, one per exam."""
        out = [f"done   {uid}: {path}" for uid, path in self.done.items()]
        out += [f"FAILED {uid}: {error}" for uid, error in self.failed.items()]
        out += [f"table  {path}" for path in self.tables]
        if not self.done and not self.failed:
            out.append(self.none_found or "no DICOM exam found")
        return out


def _patient_and_date(exam: ExamSeries, pseudonyms: PseudonymKey) -> tuple[str, str]:
    """Pseudonymous patient key and study date of an exam (for follow-up ordering)."""
    first = next(files[0] for series in exam.by_component.values() for files in series.values())
    header = pydicom.dcmread(first, stop_before_pixels=True)
    key = pseudonyms.patient_key(
        str(header.get("IssuerOfPatientID", "")), str(header.get("PatientID", ""))
    )
    return key, f"{header.get('StudyDate', '') or ''}{header.get('StudyTime', '') or ''}"


def nifti_files(paths: list[Path], what: str = "lesion") -> list[Path]:
    """NIfTI files given on the command line: files as they are, folders expanded.

    ``what`` ("lesion", "tissue") names them in messages.

    Raises
    ------
    ValueError
        If a path does not exist or a folder holds no ``.nii`` / ``.nii.gz`` file.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
            if not found:
                raise ValueError(f"{what} folder {path} holds no NIfTI (.nii/.nii.gz) file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{what} mask {path} does not exist")
    return files


def lesion_files(paths: list[Path]) -> list[Path]:
    """The NIfTI files given as reader lesions (see :func:`nifti_files`)."""
    return nifti_files(paths, "lesion")


def _sessions_with_time(exams: dict[str, ExamSeries], pseudonyms: PseudonymKey) -> set[str]:
    """Study UIDs whose BIDS session needs the time: another study of the patient that day."""
    labels = [exam_labels(exam, pseudonyms) for exam in exams.values()]
    days = Counter((label.subject, label.study_date) for label in labels)
    return {label.study_uid for label in labels if days[label.subject, label.study_date] > 1}


def _export(
    exam: ExamSeries,
    exam_out_dir: Path,
    bids_dir: Path,
    with_time: bool,
    pseudonyms: PseudonymKey,
) -> None:
    try:
        export_exam(exam_out_dir, bids_dir, exam_labels(exam, pseudonyms), with_time=with_time)
    except (OSError, ValueError) as exc:
        raise ExamError(f"BIDS export to {bids_dir} failed: {exc}") from exc


def _run_key(settings: Settings) -> PseudonymKey:
    """The site key when labels leave this run (BIDS export, a configured secret).

    Otherwise the keys only pair exams within this run, so a random key for the run avoids
    creating a secret file in a data folder a one-off ``process`` never uses.
    """
    configured = settings.pseudonym_secret or settings.pseudonym_secret_file
    if configured is not None or settings.bids_dir is not None:
        return pseudonym_key(settings)
    return PseudonymKey(secrets.token_bytes(32))


def _none_found(input_dir: Path, n_files: int) -> str:
    if not input_dir.is_dir():
        return f"no DICOM exam found: {input_dir} is not a folder"
    if n_files == 0:
        return f"no DICOM exam found: {input_dir} holds no DICOM (Part-10) file"
    return (
        f"no DICOM exam found: the {n_files} DICOM file(s) in {input_dir} are all results "
        "this software wrote (never inputs)"
    )


def _table_rows(
    exam: ExamSeries, summary: dict[str, Any], with_time: bool, pseudonyms: PseudonymKey
) -> list[dict[str, str]]:
    """Group-table rows of an exam, labelled as its BIDS session would be."""
    labels = exam_labels(exam, pseudonyms)
    try:
        session = session_label(labels.study_date, labels.study_time, with_time=with_time)
    except ValueError:
        session = "n/a"  # no StudyDate/StudyTime: the rows still say which study they are
    return exam_rows(summary, subject=labels.subject, session=session)


def process_folder(
    input_dir: Path,
    out_dir: Path,
    settings: Settings,
    *,
    lesions: list[Path] | None = None,
    masks: list[Path] | None = None,
    progress: Callable[[str], None] | None = None,
) -> FolderReport:
    """Process every exam under ``input_dir`` (any folder layout) into ``out_dir/<study UID>``.

    One exam failing does not stop the others; its error is in the report. Exams of one
    patient run in date order, each compared with the one before (follow-up). With
    ``settings.bids_dir`` every processed exam is also exported as BIDS derivatives
    (:mod:`service.exports.bids`, which also updates the group table at the BIDS root); a failing
    export fails that exam. The group table ``out_dir/cordt1_regions.tsv``
    (:mod:`service.exports.group_table`) gets the rows of every processed exam (an exam processed
    again replaces its rows).

    Parameters
    ----------
    input_dir, out_dir : Path
        Where the DICOM files are and where the results go.
    settings : Settings
        Site protocols, model, threshold, BIDS folder.
    lesions : list of Path or None
        Reader lesion masks as NIfTI files or folders of them (one per slab, matched by
        grid); only for an ``input_dir`` holding a single exam.
    masks : list of Path or None
        Cord, GM and WM masks as NIfTI files or folders of them (names containing ``cord``,
        ``gm``, ``wm``; one set per slab, matched by grid), used instead of our segmentation
        (:mod:`service.inputs.reader_masks`); only for an ``input_dir`` holding a single exam.
    progress : callable or None
        Called with ``"exam k of N: <study UID>"`` before each exam.

    Raises
    ------
    ValueError
        If ``lesions`` or ``masks`` is given and ``input_dir`` does not hold exactly one exam,
        or a given path does not exist.
    """
    report = FolderReport()
    profiles = load_site_protocols(settings.site_protocols)
    identity = result_identity(settings)
    model = load_scoring_model(settings.model_dir) if settings.model_dir else None
    files = dicom_files(input_dir) if input_dir.is_dir() else []
    exams = find_exam_series(files)
    if not exams:
        report.none_found = _none_found(input_dir, len(files))
    reader_files = lesion_files(lesions) if lesions else None
    mask_files = nifti_files(masks, "tissue") if masks else None
    for given, what in ((reader_files, "lesion"), (mask_files, "tissue")):
        if given is not None and len(exams) != 1:
            raise ValueError(
                f"reader {what} masks need INPUT_DIR to hold exactly one exam; it holds "
                f"{len(exams)}"
            )
    pseudonyms = _run_key(settings)
    with_time = _sessions_with_time(exams, pseudonyms) if settings.bids_dir is not None else set()
    previous: dict[str, dict[str, Any]] = {}
    say = progress or (lambda _msg: None)
    order = sorted(exams, key=lambda uid: _patient_and_date(exams[uid], pseudonyms))
    for number, study_uid in enumerate(order, start=1):
        say(f"exam {number} of {len(order)}: {study_uid}")
        exam = exams[study_uid]
        patient, _date = _patient_and_date(exam, pseudonyms)
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
                reader_lesion_files=reader_files,
                reader_mask_files=mask_files,
                writer_processes=settings.result_writer_processes,
            )
            if settings.bids_dir is not None:
                _export(exam, target, settings.bids_dir, study_uid in with_time, pseudonyms)
        except ExamError as exc:
            log.warning("exam %s failed: %s", study_uid, exc)
            report.failed[study_uid] = str(exc)
            continue
        try:
            table = update_table(
                out_dir, _table_rows(exam, outputs.summary, study_uid in with_time, pseudonyms)
            )
        except (OSError, ValueError) as exc:
            log.warning("exam %s: group table not written: %s", study_uid, exc)
            report.failed[study_uid] = f"group table {out_dir / TABLE_NAME} not written: {exc}"
            continue
        previous[patient] = outputs.summary
        report.done[study_uid] = target
        if table not in report.tables:
            report.tables.append(table)
    if settings.bids_dir is not None and report.done:
        report.tables.append(settings.bids_dir / TABLE_NAME)
    return report
