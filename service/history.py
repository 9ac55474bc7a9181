"""Follow-up: compare an exam's summary with the same patient's earlier one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from processing.followup import compare

__all__ = ["choose_prior", "exam_moment", "follow_up_block", "lesion_source_for_comparison"]

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
