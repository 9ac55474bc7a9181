"""Query/retrieve SCU: find a patient's studies on a PACS (C-FIND) and have one sent (C-MOVE).

Study Root, STUDY level. The node only talks DICOM: which study to fetch is decided in
:mod:`service.pipeline.history`. Nothing here logs patient identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node.scu import Destination, SendError, _associate, _check_timeout, _make_ae
from dicom_node.status import describe, is_failure
from dicom_node.tls import ClientTls
from dicom_node.validation import check_ae_title, check_uid

__all__ = ["MoveReport", "QueryError", "StudyMatch", "find_studies", "move_study"]

LOGGER = logging.getLogger(__name__)

_PENDING = (0xFF00, 0xFF01)


class QueryError(Exception):
    """A C-FIND or C-MOVE that did not complete (no association, failure status, timeout)."""


@dataclass(frozen=True)
class StudyMatch:
    """One study a PACS reported for a C-FIND.

    Attributes
    ----------
    study_uid : str
        StudyInstanceUID.
    study_date, study_time : str
        StudyDate (DA) and StudyTime (TM) as reported, ``""`` when absent.
    modalities : tuple of str
        ModalitiesInStudy.
    n_instances : int or None
        NumberOfStudyRelatedInstances when reported.
    """

    study_uid: str
    study_date: str
    study_time: str
    modalities: tuple[str, ...]
    n_instances: int | None


@dataclass(frozen=True)
class MoveReport:
    """The final C-MOVE response.

    Attributes
    ----------
    study_uid : str
        The study asked for.
    completed, failed, warning : int
        Sub-operation counts of the final response.
    status : int
        The final DIMSE status.
    """

    study_uid: str
    completed: int
    failed: int
    warning: int
    status: int


def find_studies(
    source: Destination,
    *,
    calling_ae: str,
    patient_id: str,
    issuer_of_patient_id: str = "",
    modality: str = "MR",
    date_range: tuple[str, str] = ("", ""),
    timeout_s: float = 30.0,
    tls: ClientTls | None = None,
) -> list[StudyMatch]:
    """C-FIND at STUDY level for one patient's studies of one modality.

    Parameters
    ----------
    source : Destination
        The PACS (``AET@host:port``).
    calling_ae : str
        Our AE title.
    patient_id : str
        PatientID to match (required, never logged).
    issuer_of_patient_id : str, optional
        IssuerOfPatientID to match; ``""`` does not constrain it (PACS without issuers).
    modality : str, optional
        Matched against ModalitiesInStudy.
    date_range : tuple of str, optional
        (first, last) StudyDate, DICOM DA ``YYYYMMDD``, inclusive; ``""`` leaves a side open.
    timeout_s : float, optional
        Association and DIMSE timeout.
    tls : ClientTls or None
        Certificates when ``source`` is ``tls://``.

    Returns
    -------
    list of StudyMatch
        Every match the PACS reported, in the order received.

    Raises
    ------
    ValueError
        On an empty patient ID, a malformed date or timeout, or a bad AE title.
    QueryError
        If the PACS cannot be reached or answers with a failure status.
    """
    calling_ae = check_ae_title(calling_ae, "calling AE title")
    _check_timeout(timeout_s)
    if not patient_id or not patient_id.strip():
        raise ValueError("find_studies needs a patient ID")
    for value in date_range:
        if value and (len(value) != 8 or not value.isdigit()):
            raise ValueError(f"dates must be DICOM DA (YYYYMMDD), got {value!r}")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id.strip()
    if issuer_of_patient_id.strip():
        query.IssuerOfPatientID = issuer_of_patient_id.strip()
    query.StudyInstanceUID = ""
    query.StudyDate = f"{date_range[0]}-{date_range[1]}" if any(date_range) else ""
    query.StudyTime = ""
    query.ModalitiesInStudy = modality
    query.NumberOfStudyRelatedInstances = ""
    ae = _make_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _open(ae, source, tls)
    matches: list[StudyMatch] = []
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            code = _status_code(status, source, "C-FIND")
            if code in _PENDING and identifier is not None:
                match = _study_match(identifier)
                if match is not None:
                    matches.append(match)
            elif is_failure(code):
                raise QueryError(f"C-FIND at {source}: {describe(code)}")
    finally:
        _close(assoc)
    LOGGER.info("C-FIND at %s: %d matching %s stud(y/ies)", source, len(matches), modality)
    return matches


def move_study(
    source: Destination,
    *,
    calling_ae: str,
    destination_ae: str,
    study_uid: str,
    timeout_s: float = 600.0,
    tls: ClientTls | None = None,
) -> MoveReport:
    """C-MOVE one study from ``source`` to the AE ``destination_ae`` (usually our own SCP).

    The PACS must know ``destination_ae`` (its host and port are configured there).

    Parameters
    ----------
    source : Destination
        The PACS.
    calling_ae : str
        Our AE title.
    destination_ae : str
        Move destination AE title.
    study_uid : str
        StudyInstanceUID to move.
    timeout_s : float, optional
        Association and DIMSE timeout (a C-MOVE of a large study takes a while).
    tls : ClientTls or None
        Certificates when ``source`` is ``tls://``.

    Returns
    -------
    MoveReport

    Raises
    ------
    ValueError
        On a bad UID, AE title or timeout.
    QueryError
        If the PACS cannot be reached, refuses, or reports failed or no sub-operations.
    """
    calling_ae = check_ae_title(calling_ae, "calling AE title")
    destination_ae = check_ae_title(destination_ae, "move destination AE title")
    study_uid = check_uid(study_uid, "StudyInstanceUID")
    _check_timeout(timeout_s)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    ae = _make_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _open(ae, source, tls)
    final: tuple[int, Dataset] | None = None
    try:
        for status, _identifier in assoc.send_c_move(
            identifier, destination_ae, StudyRootQueryRetrieveInformationModelMove
        ):
            code = _status_code(status, source, "C-MOVE")
            if code not in _PENDING:
                final = (code, status)
    finally:
        _close(assoc)
    if final is None:
        raise QueryError(f"C-MOVE at {source}: no final response")
    code, status = final
    report = MoveReport(
        study_uid=study_uid,
        completed=int(status.get("NumberOfCompletedSuboperations") or 0),
        failed=int(status.get("NumberOfFailedSuboperations") or 0),
        warning=int(status.get("NumberOfWarningSuboperations") or 0),
        status=code,
    )
    if is_failure(code) or report.failed or not report.completed + report.warning:
        raise QueryError(
            f"C-MOVE of study {study_uid} from {source} to {destination_ae}: {describe(code)}, "
            f"{report.completed} completed, {report.failed} failed"
        )
    LOGGER.info(
        "C-MOVE of study %s from %s to %s: %d instance(s)",
        study_uid,
        source,
        destination_ae,
        report.completed + report.warning,
    )
    return report


def _open(ae: AE, source: Destination, tls: ClientTls | None) -> Association:
    try:
        return _associate(ae, source, tls)
    except SendError as exc:
        raise QueryError(str(exc)) from exc


def _close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


def _status_code(status: Dataset, source: Destination, what: str) -> int:
    if "Status" not in status:
        raise QueryError(f"{what} at {source}: no response (timeout or aborted association)")
    return int(status.Status)


def _study_match(identifier: Dataset) -> StudyMatch | None:
    try:
        study_uid = check_uid(identifier.get("StudyInstanceUID"), "StudyInstanceUID")
    except ValueError:
        LOGGER.warning("C-FIND match without a valid StudyInstanceUID ignored")
        return None
    modalities = identifier.get("ModalitiesInStudy") or []
    if isinstance(modalities, str):
        modalities = [modalities]
    count = identifier.get("NumberOfStudyRelatedInstances")
    try:
        n_instances = int(count) if count not in (None, "") else None
    except (TypeError, ValueError):
        n_instances = None
    return StudyMatch(
        study_uid=study_uid,
        study_date=str(identifier.get("StudyDate") or ""),
        study_time=str(identifier.get("StudyTime") or ""),
        modalities=tuple(str(m) for m in _as_sequence(modalities)),
        n_instances=n_instances,
    )


def _as_sequence(value: object) -> Sequence[object]:
    if isinstance(value, str):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]
