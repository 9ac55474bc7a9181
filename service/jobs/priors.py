"""Fetch a patient's earlier exam from the configured PACS when it is not in our store.

C-FIND (study level: PatientID + issuer, modality, dates before the current exam within
``priors.max_age_days``) on ``priors.source``; :func:`service.pipeline.history.choose_prior_study`
decides which study; C-MOVE sends it to our own AE, where it arrives like any exam (spooled,
recorded, tracked, processed) and so becomes the prior of the follow-up comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from dicom_node.query import find_studies, move_study
from service.pipeline.history import choose_prior_study, prior_search_dates
from service.settings import Settings

__all__ = ["PriorFetch", "fetch_prior"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorFetch:
    """A prior exam the PACS was asked to send us.

    Attributes
    ----------
    study_uid : str
        The prior's StudyInstanceUID.
    study_date : str
        Its StudyDate.
    instances : int
        Instances the PACS reported sent (completed + warning sub-operations).
    """

    study_uid: str
    study_date: str
    instances: int


def fetch_prior(
    settings: Settings,
    *,
    patient_id: str,
    issuer_of_patient_id: str,
    current_study_uid: str,
    moment: tuple[str, str],
    have_study_uids: Collection[str] = (),
) -> PriorFetch | None:
    """Find the current exam's prior on the PACS and have it sent to us, if there is one.

    Parameters
    ----------
    settings : Settings
        ``priors`` (source, max_age_days, modality, timeout) and ``node.ae_title`` (our AE:
        calling AE and move destination).
    patient_id, issuer_of_patient_id : str
        The patient (from the current exam's header; never logged).
    current_study_uid : str
        The exam being processed.
    moment : tuple of str
        (StudyDate, StudyTime) of the current exam.
    have_study_uids : collection of str
        The patient's studies already in our store.

    Returns
    -------
    PriorFetch or None
        ``None`` when no source is configured, the current exam has no date, the patient
        has no ID, or the PACS holds no earlier exam we do not already have.

    Raises
    ------
    dicom_node.query.QueryError
        When the PACS cannot be queried or the move fails.
    """
    source = settings.priors.destination()
    if source is None or not patient_id.strip():
        return None
    dates = prior_search_dates(moment[0], settings.priors.max_age_days)
    if dates is None:
        log.info("no prior fetched for study %s: it has no StudyDate", current_study_uid)
        return None
    tls = settings.send.client_tls() if source.tls else None
    matches = find_studies(
        source,
        calling_ae=settings.node.ae_title,
        patient_id=patient_id,
        issuer_of_patient_id=issuer_of_patient_id,
        modality=settings.priors.modality,
        date_range=dates,
        timeout_s=settings.priors.timeout_s,
        tls=tls,
    )
    chosen = choose_prior_study(
        matches,
        current_study_uid=current_study_uid,
        moment=moment,
        max_age_days=settings.priors.max_age_days,
        have_study_uids=have_study_uids,
    )
    if chosen is None:
        log.info("study %s: no prior to fetch from %s", current_study_uid, source)
        return None
    report = move_study(
        source,
        calling_ae=settings.node.ae_title,
        destination_ae=settings.node.ae_title,
        study_uid=chosen.study_uid,
        timeout_s=settings.priors.timeout_s,
        tls=tls,
    )
    log.info(
        "study %s: prior %s fetched from %s (%d instance(s))",
        current_study_uid,
        chosen.study_uid,
        source,
        report.completed + report.warning,
    )
    return PriorFetch(
        study_uid=chosen.study_uid,
        study_date=chosen.study_date,
        instances=report.completed + report.warning,
    )
