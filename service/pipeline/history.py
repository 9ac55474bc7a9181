"""Follow-up: compare an exam's summary with the same patient's earlier one."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date, timedelta
from typing import Any, Protocol

from processing.followup import compare

__all__ = [
    "StudyOnPacs",
    "choose_prior",
    "choose_prior_study",
    "exam_moment",
    "follow_up_block",
    "lesion_source_for_comparison",
    "prior_search_dates",
]

#: Template coordinates (slab, s, u, v) -> rough millimetres: slabs never match each other,
#: s spans a slab (~50 mm), u and v are cord half-width (~6.5 mm) and half-depth (~4.5 mm).
TEMPLATE_AXIS_MM = (1000.0, 50.0, 6.5, 4.5)


def exam_moment(summary: Mapping[str, Any]) -> tuple[str, str]:
    """(StudyDate, StudyTime) of a summary's exam, empty strings where unknown."""
    exam = summary.get("exam") or {}
    return str(exam.get("study_date") or ""), str(exam.get("study_time") or "")


def choose_prior(
    candidates: Sequence[Mapping[str, Any]], moment: tuple[str, str]
) -> Mapping[str, Any] | None:
    """The summary of the patient's latest exam taken before ``moment``, or None.

    Parameters
    ----------
    candidates : sequence of mapping
        Summaries of the same patient's other processed exams, oldest processed first.
    moment : tuple of str
        (StudyDate, StudyTime) of the exam being processed (DICOM DA, TM; empty if unknown).

    Returns
    -------
    mapping or None
        With a study date: the latest candidate dated before it (an exam taken later, say
        from the archive after the newer one, is never the prior); when no candidate is
        dated, the one processed last. Without a study date: the latest by date, then by
        processing order.
    """
    dated = [c for c in candidates if exam_moment(c)[0]]
    if moment[0]:
        pool = [c for c in dated if exam_moment(c) < moment] if dated else list(candidates)
    else:
        pool = list(candidates)
    if not pool:
        return None
    order = {id(c): i for i, c in enumerate(pool)}
    return max(pool, key=lambda c: (exam_moment(c), order[id(c)]))


def lesion_source_for_comparison(prior: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """Reader outlines when both exams have them, otherwise automatic candidates."""

    def sources(summary: Mapping[str, Any]) -> set[str]:
        return {lesion["source"] for lesion in summary.get("lesions", [])}

    return "reader" if "reader" in sources(prior) & sources(current) else "candidate"


def _comparable(summary: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "regions": summary.get("regions", {}),
        "lesions": [
            {
                "id": lesion["id"],
                "volume_mm3": lesion["volume_mm3"],
                "centre": lesion["centre_template"],
            }
            for lesion in summary.get("lesions", [])
            if lesion["source"] == source and lesion.get("centre_template") is not None
        ],
    }


def follow_up_block(prior: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The ``follow_up`` block of the current exam's summary.

    Both summaries must come from the same normative model (same template and protocol):
    otherwise the block says why no comparison was made.
    """
    prior_exam = prior.get("exam", {})
    block: dict[str, Any] = {
        "prior_study_instance_uid": prior_exam.get("study_instance_uid"),
        "prior_study_date": prior_exam.get("study_date"),
    }
    prior_model = (prior.get("model") or {}).get("model_version")
    current_model = (current.get("model") or {}).get("model_version")
    if prior_model != current_model:
        block["compared"] = False
        block["reason"] = (
            f"prior exam was scored with model {prior_model}, this one with {current_model}"
        )
        return block
    source = lesion_source_for_comparison(prior, current)
    result = compare(
        _comparable(prior, source), _comparable(current, source), axis_scale=TEMPLATE_AXIS_MM
    )
    changes = result.to_dict()
    # summary contract (docs/summary-contract.md): "lesions" is the list of lesion changes.
    by_status = changes.pop("lesions")
    changes["lesions"] = changes.pop("lesion_changes")
    changes["lesion_ids_by_status"] = by_status
    return {**block, "compared": True, "lesion_source": source, **changes}


class StudyOnPacs(Protocol):
    """What :func:`choose_prior_study` needs of a C-FIND match (see dicom_node.query)."""

    @property
    def study_uid(self) -> str: ...

    @property
    def study_date(self) -> str: ...

    @property
    def study_time(self) -> str: ...


def _da(text: str) -> date | None:
    try:
        return date(int(text[0:4]), int(text[4:6]), int(text[6:8])) if len(text) == 8 else None
    except ValueError:
        return None


def prior_search_dates(study_date: str, max_age_days: int) -> tuple[str, str] | None:
    """The StudyDate range (DA, inclusive) to search a prior of an exam taken on ``study_date``.

    Parameters
    ----------
    study_date : str
        StudyDate of the current exam (``YYYYMMDD``).
    max_age_days : int
        How much older than the current exam a prior may be (>= 1).

    Returns
    -------
    tuple of str or None
        ``(first, last)`` with ``last`` the current exam's date (an earlier exam of the
        same day counts); ``None`` when ``study_date`` is not a valid date.

    Raises
    ------
    ValueError
        If ``max_age_days < 1``.

    Examples
    --------
    >>> prior_search_dates("20240301", 30)
    ('20240131', '20240301')
    """
    if max_age_days < 1:
        raise ValueError(f"max_age_days must be >= 1, got {max_age_days}")
    current = _da(study_date)
    if current is None:
        return None
    return (current - timedelta(days=max_age_days)).strftime("%Y%m%d"), study_date


def choose_prior_study(
    matches: Sequence[StudyOnPacs],
    *,
    current_study_uid: str,
    moment: tuple[str, str],
    max_age_days: int,
    have_study_uids: Collection[str] = (),
) -> StudyOnPacs | None:
    """The PACS study to fetch as the prior of the current exam, or None.

    Parameters
    ----------
    matches : sequence
        The patient's studies the PACS reported (C-FIND, already restricted to the modality).
    current_study_uid : str
        The exam being processed (never its own prior).
    moment : tuple of str
        (StudyDate, StudyTime) of the current exam.
    max_age_days : int
        Studies more than this many days before the current one are not considered.
    have_study_uids : collection of str
        Studies already in our store (nothing to fetch for them).

    Returns
    -------
    The latest study taken before the current one (date, then time; a study without a
    valid date is never chosen) within ``max_age_days``, unless it is already in our store:
    then ``None``, because the comparison uses it from the store. ``None`` as well when the
    current exam has no valid date (no "before" to go by).
    """
    current_day = _da(moment[0])
    if current_day is None:
        return None
    earlier = []
    for match in matches:
        day = _da(match.study_date)
        if day is None or match.study_uid == current_study_uid:
            continue
        if (match.study_date, match.study_time) >= moment:
            continue
        if (current_day - day).days > max_age_days:
            continue
        earlier.append(match)
    if not earlier:
        return None
    latest = max(earlier, key=lambda m: (m.study_date, m.study_time))
    return None if latest.study_uid in have_study_uids else latest
